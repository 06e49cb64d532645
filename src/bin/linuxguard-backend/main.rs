//! linuxguard-backend: the reference LinuxGuard backend (placeholder until the enrolment issue lands).

fn main() {
    eprintln!("linuxguard-backend: not built yet");
    std::process::exit(1);
}
