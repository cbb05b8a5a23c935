//! Sans-IO protocol cores: pure functions and state machines over bytes.
//! Nothing in here may use tokio, hyper or std::net (a test enforces it).

pub mod credssp;
pub(crate) mod guard;
pub mod http_auth;
pub mod kerberos;
pub mod psrp;
pub mod sealing;
pub mod wsman;
