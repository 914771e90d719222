//! The `tashkent` binary: the command line (`cli`) over the libraries.

mod cli;

// The proxy and the certifier allocate per message; mimalloc is what the
// certifier's benchmark measures (glibc malloc cost a quarter of its CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    cli::main()
}
