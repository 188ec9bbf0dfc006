//! Times the MatMulQ4_1 kernels on one thread, without onnxruntime: SmolLM2's largest decode
//! linear (576 → 1536) for 1 and 37 activation rows (a decode step and a short prompt), on
//! every instruction set this CPU has.
//!
//!     cargo run --release -p switchyard-blockops --example kernel_bench
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use switchyard_blockops::kernel::{Activations, Isa, Plan, Weights};

fn main() {
    let (k, n) = (576usize, 1536usize);
    let qs: Vec<u8> = (0..n * k / 2).map(|i| (i * 7919 % 251) as u8).collect();
    let d = vec![0x1400u16; n * k / 32]; // 2^-10
    let m = vec![0x9400u16; n * k / 32]; // -2^-10
    let w = Weights::new(k, n, &qs, &d, &m).unwrap();
    println!(
        "{:>5} {:>12} {:>12} {:>10}",
        "rows", "kernel", "µs per call", "weights GB/s"
    );
    for rows in [1usize, 37] {
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let a = Activations::quantize(&x, k).unwrap();
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let mut out = vec![0f32; rows * n];
            let iters = (4000 / rows).max(20);
            let t = Instant::now();
            for _ in 0..iters {
                Plan::new(w, &a, &mut out).unwrap().on(isa).unwrap().run();
            }
            let us = t.elapsed().as_secs_f64() / iters as f64 * 1e6;
            let bytes = (qs.len() + 2 * d.len() + 2 * m.len()) as f64;
            println!(
                "{rows:>5} {:>12} {us:>12.1} {:>10.1}",
                isa.name(),
                bytes / us / 1e3
            );
        }
    }
}
