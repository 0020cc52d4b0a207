fn main() {
    restore_sigpipe();
    if let Err(e) = convkit::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so `convkit list | head` would panic on the closed pipe; with the
/// default action the process ends quietly, as command-line tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: installs the default disposition for SIGPIPE before any thread starts.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
