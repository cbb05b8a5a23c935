fn main() -> std::process::ExitCode {
    winrm_relay::cli::run()
}
