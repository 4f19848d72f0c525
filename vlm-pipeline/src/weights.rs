//! Memory-mapped safetensors checkpoints: one file, or an index with shards.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A failure to open a checkpoint's tensor files.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("`{path}` is not a valid safetensors index: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("no `model.safetensors` or `model.safetensors.index.json` in `{0}`")]
    NotFound(PathBuf),
}

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the file.
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint, memory-mapped; values are decoded only when asked for.
pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
    metadata: HashMap<String, String>,
}

impl Weights {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json` (with its shards beside it), or a
    /// directory holding `model.safetensors` or `model.safetensors.index.json`.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            let single = path.join("model.safetensors");
            return if index.is_file() {
                Self::open_index(&index)
            } else if single.is_file() {
                Self::open_files(&[single])
            } else {
                Err(WeightsError::NotFound(path.to_path_buf()))
            };
        }
        if path.to_string_lossy().ends_with(".json") {
            Self::open_index(path)
        } else {
            Self::open_files(&[path.to_path_buf()])
        }
    }

    fn open_index(index: &Path) -> Result<Self, WeightsError> {
        let text = std::fs::read_to_string(index).map_err(|source| WeightsError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| WeightsError::Index {
            path: index.to_path_buf(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let mut shards: Vec<String> = Vec::new();
        for file in map.values() {
            let file = file
                .as_str()
                .ok_or_else(|| bad("`weight_map` values must be file names".into()))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(bad(format!(
                    "shard name `{file}` must be a plain file name"
                )));
            }
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_string());
            }
        }
        shards.sort();
        let dir = index.parent().unwrap_or(Path::new("."));
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let weights = Self::open_files(&paths)?;
        for name in map.keys() {
            if !weights.entries.contains_key(name) {
                return Err(bad(format!(
                    "tensor `{name}` is listed but in none of its shards"
                )));
            }
        }
        Ok(weights)
    }

    fn open_files(paths: &[PathBuf]) -> Result<Self, WeightsError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        let mut metadata = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let io = |source| WeightsError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io)?;
            // SAFETY: checkpoints are read-only inputs; the map lives as long as `Weights`.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
            let parsed = SafeTensors::deserialize(&mmap).map_err(|e| WeightsError::Format {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if let Ok((_, header)) = SafeTensors::read_metadata(&mmap) {
                metadata.extend(header.metadata().clone().unwrap_or_default());
            }
            let base = mmap.as_ptr() as usize;
            for (name, view) in parsed.tensors() {
                let start = view.data().as_ptr() as usize - base;
                let end = start + view.data().len();
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        start,
                        end,
                    },
                );
            }
            files.push((path.clone(), mmap));
        }
        Ok(Self {
            files,
            entries,
            metadata,
        })
    }

    /// The free-form `__metadata__` strings of the header(s).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The files backing this checkpoint.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// A tensor's values ([`vlm_kernels::loader::stored_tensor_data`]): f16 and bf16 as stored
    /// (the loader converts them one tensor at a time), f64 and f32 as f32, `uint32` as u32
    /// (MLX's packed weights), other integer and bool tensors as i64. Other types (8-bit
    /// floats) come back as raw bytes, which no model tensor accepts: the loader names the
    /// tensor and its unexpected shape.
    pub fn get(&self, name: &str) -> Option<TensorData> {
        let e = self.entries.get(name)?;
        let bytes = &self.files[e.file].1[e.start..e.end];
        let raw = || TensorData::new(bytes.to_vec(), [bytes.len()]);
        let data = match TensorView::new(e.dtype, e.shape.clone(), bytes) {
            Ok(view) => vlm_kernels::loader::stored_tensor_data(&view).unwrap_or_else(|_| raw()),
            Err(_) => raw(),
        };
        // The values are copied out: the file's pages need not stay in this process's resident
        // set (a 7B release is 15 GB of them). They stay in the page cache; a later read of
        // the same range faults them back in.
        #[cfg(unix)]
        {
            let (map, base) = (&self.files[e.file].1, e.start);
            // SAFETY: the mapping is read-only and file-backed: dropping its pages loses
            // nothing, and no reference into the range outlives this call (`data` is a copy).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, base, e.end - base)
            };
        }
        Some(data)
    }

    /// A tensor as stored: its safetensors dtype, shape and little-endian bytes.
    pub fn raw(&self, name: &str) -> Option<(safetensors::Dtype, &[usize], &[u8])> {
        let e = self.entries.get(name)?;
        Some((e.dtype, &e.shape, &self.files[e.file].1[e.start..e.end]))
    }

    /// The stored dtype of a tensor, as safetensors names it.
    pub fn dtype(&self, name: &str) -> Option<String> {
        self.entries.get(name).map(|e| format!("{:?}", e.dtype))
    }
}
