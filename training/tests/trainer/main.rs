//! The trainer's integration tests, in one test binary (each links burn and the whole trainer;
//! linking them one by one cost minutes). `cargo test --release -p fer-train --test trainer <name>`
//! runs a part.

mod prepare;
mod preprocess_parity;
mod quantize;
mod smoke;
