//! Gated feed-forward activations.

use crate::model::config::Activation;

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
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

fn function(act: Activation) -> fn(f32) -> f32 {
    match act {
        Activation::Silu => silu,
        Activation::GeluTanh => gelu_tanh,
        Activation::Gelu => gelu_erf,
    }
}

/// `gate = act(gate) * up`, elementwise.
pub fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
    let f = function(act);
    for (g, u) in gate.iter_mut().zip(up) {
        *g = f(*g) * u;
    }
}

/// `x = act(x)`, elementwise (ungated MLPs).
pub fn apply(act: Activation, x: &mut [f32]) {
    let f = function(act);
    x.iter_mut().for_each(|v| *v = f(*v));
}
