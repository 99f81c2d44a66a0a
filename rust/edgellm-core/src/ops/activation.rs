//! Gated feed-forward activations, elementwise: long inputs (prompts) in
//! parallel pieces on the current pool, each element computed the same way
//! whatever the split.

use super::par;
use crate::attention::flash::exp_neg;
use crate::model::config::Activation;

// Elements per parallel piece: a 512-token prompt's FFN rows (millions, an
// `exp` each) took ~7% of TinyLlama's prefill on one thread.
use par::PIECE;

/// `x · sigmoid(x)`, from `e = exp(−|x|) ≤ 1` (the branch-free `exp_neg`, so
/// the loops vectorise; libm's `expf` was ~4 ns an element): sigmoid is
/// `1 / (1 + e)` for `x ≥ 0` and `e / (1 + e)` below.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let e = exp_neg(-x.abs());
    x * (if x >= 0.0 { 1.0 } else { e } / (1.0 + e))
}

fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_56; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

fn gelu_erf(x: f32) -> f32 {
    // std has no erf; Abramowitz–Stegun 7.1.26 in f64 is within 1.5e-7, far below
    // the f32 noise of the surrounding matmuls.
    let z = x as f64 / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = (1.0 - poly * (-z * z).exp()).copysign(z);
    (0.5 * x as f64 * (1.0 + erf)) as f32
}

/// `gate = act(gate) * up`, elementwise.
pub fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gated: gate and up differ in length");
    match act {
        Activation::Silu => gated_with(silu, gate, up),
        Activation::GeluTanh => gated_with(gelu_tanh, gate, up),
        Activation::Gelu => gated_with(gelu_erf, gate, up),
    }
}

/// `x = act(x)`, elementwise (ungated MLPs).
pub fn apply(act: Activation, x: &mut [f32]) {
    match act {
        Activation::Silu => apply_with(silu, x),
        Activation::GeluTanh => apply_with(gelu_tanh, x),
        Activation::Gelu => apply_with(gelu_erf, x),
    }
}

// Generic over the function, so that each loop is compiled with it inlined.
fn gated_with(f: impl Fn(f32) -> f32 + Sync, gate: &mut [f32], up: &[f32]) {
    par::zip_pieces(gate, up, 2, |g, u| g.iter_mut().zip(u).for_each(|(g, u)| *g = f(*g) * u));
}

fn apply_with(f: impl Fn(f32) -> f32 + Sync, x: &mut [f32]) {
    let run = |x: &mut [f32]| x.iter_mut().for_each(|v| *v = f(*v));
    if x.len() < 2 * PIECE {
        return run(x);
    }
    par::for_each_chunk_mut(x, PIECE, |_, x| run(x));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 * 16.0 - 8.0).collect()
    }

    #[test]
    fn long_inputs_in_parallel_pieces_equal_the_elementwise_function() {
        for act in [Activation::Silu, Activation::GeluTanh, Activation::Gelu] {
            let f = match act {
                Activation::Silu => silu,
                Activation::GeluTanh => gelu_tanh,
                Activation::Gelu => gelu_erf,
            };
            for n in [5, 2 * PIECE - 1, 2 * PIECE, 3 * PIECE + 7] {
                let (g0, up) = (values(n, 1), values(n, 2));
                let want_g: Vec<f32> = g0.iter().zip(&up).map(|(g, u)| f(*g) * u).collect();
                let want_a: Vec<f32> = g0.iter().map(|g| f(*g)).collect();
                for threads in [1, 2, 3] {
                    let pool = Pool::new(threads).unwrap();
                    let (mut g, mut a) = (g0.clone(), g0.clone());
                    pool.install(|| {
                        gated(act, &mut g, &up);
                        apply(act, &mut a);
                    });
                    assert!(g.iter().zip(&want_g).all(|(x, y)| x.to_bits() == y.to_bits()), "{act:?} n {n} threads {threads}");
                    assert!(a.iter().zip(&want_a).all(|(x, y)| x.to_bits() == y.to_bits()), "{act:?} n {n} threads {threads}");
                }
            }
        }
    }

    #[test]
    fn activations_match_f64_references() {
        let edges = [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 20.0, -20.0, 86.0, -86.0, 88.0, -88.0, 100.0, -100.0];
        for x in values(1000, 3).into_iter().chain(edges) {
            let d = x as f64;
            let s = d / (1.0 + (-d).exp());
            let g = 0.5 * d * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (d + 0.044715 * d.powi(3))).tanh());
            assert!((silu(x) as f64 - s).abs() <= 1e-6 * (1.0 + s.abs()), "silu({x})");
            assert!((gelu_tanh(x) as f64 - g).abs() <= 1e-6 * (1.0 + g.abs()), "gelu_tanh({x})");
        }
        assert!(silu(f32::NAN).is_nan());
        assert_eq!(silu(f32::INFINITY), f32::INFINITY);
    }
}
