//! The delivery page's rendering: data in, escaped HTML out (pure: no I/O). Its handler, the
//! operator-token gate and the queries it runs are in [`crate::http::ui`].

pub mod render;
