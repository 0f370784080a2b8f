//! HTTP surface (stub).
use std::sync::Arc;

use crate::Identity;

pub fn router(_identity: Arc<Identity>) -> axum::Router {
    axum::Router::new()
}
