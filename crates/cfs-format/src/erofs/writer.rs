//! EROFS image writer (placeholder until the writer lands).
