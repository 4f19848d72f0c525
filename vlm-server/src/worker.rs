//! The inference worker: one thread owns the model, so the async runtime never blocks on it.
//!
//! Requests reach it through a bounded queue (a full queue is the caller's 429); every request
//! carries its own event channel, and a request whose receiver is gone (the client left) is
//! skipped or cancelled at the next token.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::tensor::backend::Backend;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use vlm_pipeline::image::Rgb8;
use vlm_pipeline::{FastVlm, Generation, GenerationOptions, Message, PipelineError, Request};

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
    pub image: Option<Rgb8>,
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

#[derive(Debug, Clone)]
pub(crate) enum JobError {
    NoModel,
    /// The request itself is wrong (image, prompt length, options).
    BadRequest(String),
    Internal(String),
}

/// The queue is full: the caller answers 429.
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
    /// Requests accepted and not yet started.
    pub depth: usize,
    pub capacity: usize,
}

#[derive(Debug, Clone)]
enum ModelState {
    Empty,
    Loading { model: String, progress: f32 },
    Ready { model: String },
    Failed { model: String, message: String },
}

struct Shared {
    state: Mutex<ModelState>,
    depth: AtomicUsize,
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
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
}

impl Worker {
    /// Starts the model thread on `device`; `capacity` requests may wait behind the running one.
    /// `warm_up` runs a one-token request after each load, so that kernel compilation and
    /// autotuning (GPU backends) are not paid by the first user.
    pub fn spawn<B: Backend>(
        device: B::Device,
        capacity: usize,
        backend: String,
        warm_up: bool,
    ) -> Self {
        let (jobs, rx) = sync_channel::<Job>(capacity);
        let shared = Arc::new(Shared {
            state: Mutex::new(ModelState::Empty),
            depth: AtomicUsize::new(0),
            capacity,
            backend,
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("fastvlm-model".into())
            .spawn(move || {
                let mut model: Option<FastVlm<B>> = None;
                for job in rx {
                    thread_shared.depth.fetch_sub(1, Ordering::SeqCst);
                    match job {
                        Job::Load { name, dir } => {
                            load(&thread_shared, &mut model, name, dir, &device, warm_up)
                        }
                        Job::Generate(job) => generate(model.as_ref(), job),
                    }
                }
            })
            .expect("spawning the model thread");
        Self { jobs, shared }
    }

    /// Queues a job, or says the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        self.shared.depth.fetch_add(1, Ordering::SeqCst);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.depth.fetch_sub(1, Ordering::SeqCst);
                Err(QueueFull)
            }
        }
    }

    /// Whether a submit would be refused now: lets a handler answer 429 before decoding an
    /// image it would throw away. (Racy by nature; `submit` is the real check.)
    pub fn is_full(&self) -> bool {
        self.shared.depth.load(Ordering::SeqCst) >= self.shared.capacity
    }

    /// Marks `name` as loading at once (before the job runs), so that clients polling the
    /// status never see the old state after asking for a load.
    pub fn load(&self, name: String, dir: PathBuf) -> Result<(), QueueFull> {
        let previous = self.shared.state().clone();
        *self.shared.state() = ModelState::Loading {
            model: name.clone(),
            progress: 0.0,
        };
        self.submit(Job::Load { name, dir }).inspect_err(|_| {
            *self.shared.state() = previous;
        })
    }

    pub fn status(&self) -> Status {
        let queue = QueueStatus {
            depth: self.shared.depth.load(Ordering::SeqCst),
            capacity: self.shared.capacity,
        };
        let (state, model, progress, error) = match self.shared.state().clone() {
            ModelState::Empty => ("empty", None, None, None),
            ModelState::Loading { model, progress } => {
                ("loading", Some(model), Some(progress), None)
            }
            ModelState::Ready { model } => ("ready", Some(model), None, None),
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
        match &*self.shared.state() {
            ModelState::Ready { model } => Some(model.clone()),
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
    name: String,
    dir: PathBuf,
    device: &B::Device,
    warm_up: bool,
) {
    // One model in memory: the old one goes before the new one is read.
    *model = None;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let loaded = FastVlm::<B>::load_with_progress(&dir, device, &mut |fraction| {
            if let ModelState::Loading { progress, .. } = &mut *shared.state() {
                *progress = fraction;
            }
        })
        .map_err(|e| e.to_string())?;
        if warm_up {
            let request = Request {
                image: Some(Rgb8 {
                    width: 32,
                    height: 32,
                    data: vec![0; 32 * 32 * 3],
                }),
                system: None,
                messages: vec![Message {
                    role: vlm_pipeline::Role::User,
                    content: "Hi".into(),
                }],
                options: GenerationOptions {
                    temperature: 0.0,
                    max_new_tokens: 2,
                    ..Default::default()
                },
            };
            loaded
                .generate(&request, &mut |_| ControlFlow::Continue(()))
                .map_err(|e| format!("warm-up failed: {e}"))?;
        }
        Ok::<_, String>(loaded)
    }));
    let next = match result {
        Ok(Ok(loaded)) => {
            *model = Some(loaded);
            ModelState::Ready { model: name }
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
    let _ = events.send(Event::Started);
    let request = Request {
        image: job.image,
        system: job.system,
        messages: job.messages,
        options: job.options,
    };
    let mut started = false;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        model.generate(&request, &mut |event| {
            let text = if started {
                event.text
            } else {
                event.text.trim_start()
            };
            if !text.is_empty() {
                started = true;
                let _ = events.send(Event::Token(text.to_string()));
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
