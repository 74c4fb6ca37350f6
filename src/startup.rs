//! Starting the HTTP application: [`Application::build`] binds the listener and wires the state;
//! [`Application::run_until_stopped`] serves (port 0 in tests). It lives in `http`.

pub use crate::http::Application;
