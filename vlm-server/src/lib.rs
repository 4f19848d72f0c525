//! FastVLM over HTTP: the live webcam page and the OpenAI-compatible API.
//!
//! Not built yet (issue #7); the crate is a workspace member so that its place in the design is
//! fixed. It has no code.
