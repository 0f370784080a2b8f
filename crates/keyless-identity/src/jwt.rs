//! JWT (stub).
