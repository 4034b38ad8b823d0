//! Directory scanning (placeholder until the scanner lands).
