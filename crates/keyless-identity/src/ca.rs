//! CA (stub).
