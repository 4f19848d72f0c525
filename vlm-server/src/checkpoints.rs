//! The checkpoints a client may load: directories with a `config.json` right under the models
//! root (plus the one given on the command line). Clients name them; paths never come from a
//! client, and a name that resolves outside the root (`..`, a symlink out) is refused.

use std::path::{Path, PathBuf};

use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct Checkpoints {
    root: PathBuf,
    /// `--model-path`, addressable by its directory name even when outside the root.
    extra: Option<(String, PathBuf)>,
}

impl Checkpoints {
    pub fn new(root: PathBuf, extra: Option<PathBuf>) -> Self {
        let extra = extra.map(|p| (name_of(&p), p));
        Self { root, extra }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the loadable checkpoints, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("config.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n) && self.resolve(n).is_ok())
            .collect();
        if let Some((name, _)) = &self.extra
            && !names.contains(name)
        {
            names.push(name.clone());
        }
        names.sort();
        names
    }

    /// The directory of checkpoint `name`.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, ApiError> {
        if let Some((extra, path)) = &self.extra
            && extra == name
        {
            return Ok(path.clone());
        }
        if !valid_name(name) {
            return Err(ApiError::bad_request(format!(
                "invalid checkpoint name `{name}`: a directory name under the models root"
            )));
        }
        let unknown = || {
            ApiError::not_found(format!(
                "no checkpoint `{name}` under the models root (GET /api/checkpoints lists them)"
            ))
        };
        let dir = self.root.join(name);
        let (Ok(root), Ok(real)) = (self.root.canonicalize(), dir.canonicalize()) else {
            return Err(unknown());
        };
        if !real.starts_with(&root) || real == root {
            return Err(ApiError::bad_request(format!(
                "checkpoint `{name}` points outside the models root"
            )));
        }
        if !real.join("config.json").is_file() {
            return Err(unknown());
        }
        Ok(real)
    }
}

/// A plain directory name: no separators, no `.`/`..`, not hidden, printable.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

/// The name a checkpoint directory is known by: its (resolved) directory name.
pub(crate) fn name_of(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("good")).unwrap();
        std::fs::write(root.path().join("good/config.json"), "{}").unwrap();
        std::fs::create_dir(root.path().join("no-config")).unwrap();
        std::fs::write(outside.path().join("config.json"), "{}").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();

        let c = Checkpoints::new(root.path().to_path_buf(), None);
        assert!(c.resolve("good").unwrap().ends_with("good"));
        for bad in ["..", ".", "../x", "a/b", "", ".hidden", "x\\y"] {
            let e = c.resolve(bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        assert_eq!(c.resolve("no-config").unwrap_err().status, 404);
        assert_eq!(c.resolve("absent").unwrap_err().status, 404);
        #[cfg(unix)]
        {
            assert_eq!(c.resolve("escape").unwrap_err().status, 400);
        }
        assert_eq!(c.list(), vec!["good".to_string()]);
    }
}
