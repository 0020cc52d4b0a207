fn main() {
    if let Err(e) = convkit::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
