//! The paths callers used when this crate was one `processes` module
//! (`stack::processes::{Stack, http_get, …}`); they stay valid. New code
//! imports from the crate root (`stack::Stack`) or the module of the
//! concern (`stack::nginx::Nginx`).

pub use crate::http::{http_get, http_get_full, wait_healthy, HttpResponse};
pub use crate::nginx::{nginx_binary, render_nginx, Nginx, NginxConfig, NginxLimits};
pub use crate::ports::free_port;
pub use crate::process::send_signal;
pub use crate::project::{bin_dir, project_dir};
pub use crate::stack::{Stack, StackOptions};
