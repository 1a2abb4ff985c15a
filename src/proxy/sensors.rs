//! PLACEHOLDER
pub fn render(_r: &crate::root::Root) -> Result<String, String> {
    Err("x".into())
}
pub fn command(_r: &crate::root::Root) -> std::process::ExitCode {
    std::process::ExitCode::from(1)
}
