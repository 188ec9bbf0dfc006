//! Mock Google Gemini generateContent / streamGenerateContent (not written yet: mounts no routes).

use axum::Router;

use super::MockConfig;

/// Adds this provider's routes to `router`.
pub fn mount(router: Router, _config: &MockConfig) -> Router {
    router
}
