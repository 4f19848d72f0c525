//! The layer FastVLM's model crates stand on: the ops they run and the loading they share.
//!
//! - [`ops`]: every op of the models that has more than burn's implementation (attention,
//!   convolutions, activations, norms, a decoding step's fused rows), each one total function
//!   that picks how it runs: a CubeCL kernel ([`cube`]) where `B`'s tensors are CubeCL tensors
//!   of a runtime compiled in (features `wgpu`, `cuda`), a parallel vectorised loop ([`flex`])
//!   on burn's `flex` CPU backend at f32 (feature `flex`), burn's own ops everywhere else. The
//!   models stay generic over `B: Backend` and never ask which backend they run on.
//! - [`Linear`]: the linear layer the models hold, run through [`ops`].
//! - [`loader`]: building a model from named tensors (one error type; shape, dtype and
//!   training-form checks; declarative name maps per checkpoint convention) or from random
//!   values ([`loader::Init`]), through one [`loader::Params`] interface.
//!
//! `FASTVLM_CUBECL_KERNELS=off` leaves every op to burn on the GPU backends, and a list of
//! kernel names runs only those ([`cube::switched_on`]), for timing each kernel against burn's
//! op in one build.

mod geometry;
mod linear;
pub mod loader;
pub mod ops;
pub mod quant;

#[cfg(feature = "cubecl")]
pub mod cube;
#[cfg(feature = "flex")]
pub mod flex;
#[cfg(feature = "testing")]
pub mod testing;

pub use geometry::Depthwise;
pub use linear::{Linear, LinearWeight};
pub use quant::{Activations, Quantization, QuantizedMatrix};

use std::any::{Any, TypeId};

/// Whether `T` and `U` are one type.
#[cfg_attr(
    not(any(feature = "wgpu", feature = "cuda", feature = "flex")),
    allow(dead_code)
)]
fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// `value` as `U`, which [`is`] has established to be its own type.
#[cfg_attr(
    not(any(feature = "wgpu", feature = "cuda", feature = "flex")),
    allow(dead_code)
)]
fn cast<T: 'static, U: 'static>(value: T) -> U {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
        .expect("cast only after `is` matched the types")
}
