//! The inference worker: one thread owns the model, so the async runtime never blocks on it.
//!
//! Admission comes first: a request takes a [`Slot`] before its body is read or its image
//! decoded (none left is the caller's 429), so at most `capacity + 1` requests hold memory at
//! once, one running and `capacity` waiting. Every request carries its own event channel, and
//! a request whose receiver is gone (the client left) is skipped or cancelled at the next
//! token.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::tensor::backend::Backend;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use vlm_pipeline::image::Rgb8;
use vlm_pipeline::{
    AspectRatio, FastVlm, Generation, GenerationOptions, Message, PipelineError, Request,
};

/// Work for the model thread.
pub(crate) enum Job {
    /// Replace the model in memory by the checkpoint at `dir`.
    Load {
        name: String,
        dir: PathBuf,
    },
    Generate(GenerateJob),
}

pub(crate) struct GenerateJob {
    /// Already shrunk to the model's input by [`vlm_pipeline::image::prepare`].
    pub image: Option<Prepared>,
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub options: GenerationOptions,
    pub events: UnboundedSender<Event>,
}

/// What a generation reports, in order: `Started`, `Token`s, then `Done` or `Failed`.
#[derive(Debug)]
pub(crate) enum Event {
    Started,
    /// Answer text that became complete (leading whitespace of the answer removed, as the
    /// reference prints it).
    Token(String),
    Done(Box<Generation>),
    Failed(JobError),
}

/// An image prepared for the model that was loaded when it arrived.
pub(crate) struct Prepared {
    pub image: Rgb8,
    /// The model input it was prepared for.
    pub input: ModelInput,
}

/// What a loaded model takes as image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModelInput {
    pub size: usize,
    pub aspect: AspectRatio,
}

#[derive(Debug, Clone)]
pub(crate) enum JobError {
    NoModel,
    /// The request itself is wrong (image, prompt length, options).
    BadRequest(String),
    /// Another model was loaded while the request waited.
    ModelChanged,
    Internal(String),
}

/// No slot is free: the caller answers 429.
#[derive(Debug)]
pub(crate) struct QueueFull;

/// Where the model stands, as `/api/status` and `/health` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// `empty`, `loading`, `ready` or `error`.
    pub state: &'static str,
    /// The checkpoint loaded, being loaded, or that failed to load.
    pub model: Option<String>,
    pub backend: String,
    /// Fraction of the checkpoint's tensors loaded, while loading.
    pub progress: Option<f32>,
    pub error: Option<String>,
    pub queue: QueueStatus,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct QueueStatus {
    /// Requests accepted and not yet started (their bodies and images may still be read).
    pub depth: usize,
    pub capacity: usize,
}

#[derive(Debug, Clone)]
enum ModelState {
    Empty,
    Loading { model: String, progress: f32 },
    Ready { model: String, input: ModelInput },
    Failed { model: String, message: String },
}

struct Shared {
    state: Mutex<ModelState>,
    /// Requests holding a slot: reserved, queued or running.
    admitted: AtomicUsize,
    running: AtomicBool,
    capacity: usize,
    backend: String,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, ModelState> {
        // A poisoned lock only means a panic elsewhere; the state value itself stays valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle on the model thread; cheap to clone. The thread ends when the last handle drops.
#[derive(Clone)]
pub(crate) struct Worker {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
}

/// A place in the queue, held from before a request's body is read until its job is done;
/// dropped unused, it frees the place.
pub(crate) struct Slot {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
    used: bool,
}

impl Slot {
    /// Hands the job to the model thread; the slot is freed when the job is done.
    pub fn submit(mut self, job: Job) {
        self.used = true;
        if self.jobs.send(job).is_err() {
            // The model thread is gone; the job's channel closing tells the caller.
            self.shared.admitted.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.used {
            self.shared.admitted.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Worker {
    /// Starts the model thread on `device`; `capacity` requests may wait behind the running one
    /// (0: none waits, a request is admitted only when the model is idle).
    /// `warm_up` runs a one-token request after each load, so that kernel compilation and
    /// autotuning (GPU backends) are not paid by the first user. `weights`: the language
    /// model quantized at load, and how quantized weights meet the activations.
    pub fn spawn<B: Backend>(
        device: B::Device,
        capacity: usize,
        backend: String,
        warm_up: bool,
        weights: (
            Option<vlm_pipeline::Quantization>,
            vlm_pipeline::Activations,
        ),
    ) -> Self {
        // Unbounded: slots bound what is in it.
        let (jobs, rx) = channel::<Job>();
        let shared = Arc::new(Shared {
            state: Mutex::new(ModelState::Empty),
            admitted: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            capacity,
            backend,
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("fastvlm-model".into())
            .spawn(move || {
                let mut model: Option<FastVlm<B>> = None;
                for job in rx {
                    thread_shared.running.store(true, Ordering::SeqCst);
                    match job {
                        Job::Load { name, dir } => load(
                            &thread_shared,
                            &mut model,
                            (name, dir),
                            &device,
                            warm_up,
                            weights,
                        ),
                        Job::Generate(job) => generate(model.as_ref(), job),
                    }
                    thread_shared.running.store(false, Ordering::SeqCst);
                    thread_shared.admitted.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .expect("spawning the model thread");
        Self { jobs, shared }
    }

    /// A slot for one request, or [`QueueFull`] when `capacity + 1` are admitted already.
    pub fn reserve(&self) -> Result<Slot, QueueFull> {
        let limit = self.shared.capacity + 1;
        self.shared
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| QueueFull)?;
        Ok(Slot {
            jobs: self.jobs.clone(),
            shared: self.shared.clone(),
            used: false,
        })
    }

    /// Marks `name` as loading at once (before the job runs), so that clients polling the
    /// status never see the old state after asking for a load.
    pub fn load(&self, name: String, dir: PathBuf) -> Result<(), QueueFull> {
        let slot = self.reserve()?;
        *self.shared.state() = ModelState::Loading {
            model: name.clone(),
            progress: 0.0,
        };
        slot.submit(Job::Load { name, dir });
        Ok(())
    }

    pub fn status(&self) -> Status {
        let admitted = self.shared.admitted.load(Ordering::SeqCst);
        let running = usize::from(self.shared.running.load(Ordering::SeqCst));
        let queue = QueueStatus {
            depth: admitted.saturating_sub(running),
            capacity: self.shared.capacity,
        };
        let (state, model, progress, error) = match self.shared.state().clone() {
            ModelState::Empty => ("empty", None, None, None),
            ModelState::Loading { model, progress } => {
                ("loading", Some(model), Some(progress), None)
            }
            ModelState::Ready { model, .. } => ("ready", Some(model), None, None),
            ModelState::Failed { model, message } => ("error", Some(model), None, Some(message)),
        };
        Status {
            state,
            model,
            backend: self.shared.backend.clone(),
            progress,
            error,
            queue,
        }
    }

    /// The model answering requests, if one is ready.
    pub fn ready_model(&self) -> Option<String> {
        self.ready().map(|(model, _)| model)
    }

    /// The model answering requests and its image input, if one is ready.
    pub fn ready(&self) -> Option<(String, ModelInput)> {
        match &*self.shared.state() {
            ModelState::Ready { model, input } => Some((model.clone(), *input)),
            _ => None,
        }
    }

    /// Whether a load is under way (a second one is refused meanwhile).
    pub fn loading(&self) -> bool {
        matches!(&*self.shared.state(), ModelState::Loading { .. })
    }
}

fn load<B: Backend>(
    shared: &Shared,
    model: &mut Option<FastVlm<B>>,
    (name, dir): (String, PathBuf),
    device: &B::Device,
    warm_up: bool,
    (quantization, activations): (
        Option<vlm_pipeline::Quantization>,
        vlm_pipeline::Activations,
    ),
) {
    // One model in memory: the old one goes before the new one is read.
    *model = None;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut loaded = FastVlm::<B>::load_with(&dir, device, quantization, &mut |fraction| {
            if let ModelState::Loading { progress, .. } = &mut *shared.state() {
                *progress = fraction;
            }
        })
        .map_err(|e| e.to_string())?;
        loaded.set_activations(activations);
        if warm_up {
            loaded
                .warm_up()
                .map_err(|e| format!("warm-up failed: {e}"))?;
        }
        Ok::<_, String>(loaded)
    }));
    let next = match result {
        Ok(Ok(loaded)) => {
            let input = ModelInput {
                size: loaded.config.image_size,
                aspect: loaded.config.aspect_ratio,
            };
            *model = Some(loaded);
            ModelState::Ready { model: name, input }
        }
        Ok(Err(message)) => ModelState::Failed {
            model: name,
            message,
        },
        Err(panic) => ModelState::Failed {
            model: name,
            message: format!("internal error while loading: {}", panic_message(&panic)),
        },
    };
    *shared.state() = next;
}

fn generate<B: Backend>(model: Option<&FastVlm<B>>, job: GenerateJob) {
    let events = job.events;
    if events.is_closed() {
        return;
    }
    let Some(model) = model else {
        let _ = events.send(Event::Failed(JobError::NoModel));
        return;
    };
    let input = ModelInput {
        size: model.config.image_size,
        aspect: model.config.aspect_ratio,
    };
    if job.image.as_ref().is_some_and(|p| p.input != input) {
        let _ = events.send(Event::Failed(JobError::ModelChanged));
        return;
    }
    let _ = events.send(Event::Started);
    let request = Request {
        image: job.image.map(|p| p.image),
        system: job.system,
        messages: job.messages,
        options: job.options,
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        model.generate(&request, &mut |event| {
            if !event.text.is_empty() {
                let _ = events.send(Event::Token(event.text.to_string()));
            }
            if events.is_closed() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
    }));
    let event = match result {
        Ok(Ok(generation)) => Event::Done(Box::new(generation)),
        Ok(Err(e)) => Event::Failed(classify(e)),
        Err(panic) => Event::Failed(JobError::Internal(format!(
            "internal error: {}",
            panic_message(&panic)
        ))),
    };
    let _ = events.send(event);
}

fn classify(e: PipelineError) -> JobError {
    match e {
        PipelineError::Image(_)
        | PipelineError::PromptTooLong { .. }
        | PipelineError::ImageCount { .. }
        | PipelineError::Options(_) => JobError::BadRequest(e.to_string()),
        other => JobError::Internal(other.to_string()),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
