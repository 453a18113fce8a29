//! Links the `starling` binary as a position-dependent executable (`-no-pie`): the dynamic
//! loader then has no relative relocations to apply at start (76,501 of them, which wrote
//! ~270 pages of `.data.rel.ro` on every start), which is most of a command line's start-up
//! on machines where a page fault is slow. The code is still compiled position-independent;
//! only the final link changes.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
