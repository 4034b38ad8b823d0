//! EROFS image reader (placeholder until the reader lands).
