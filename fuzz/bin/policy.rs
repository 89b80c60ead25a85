//! AFL target `policy`: see `fuzz/targets.rs` and `fuzz/README.md`.

#[path = "../targets.rs"]
mod targets;

fn main() {
    afl::fuzz!(|data: &[u8]| targets::policy(data));
}
