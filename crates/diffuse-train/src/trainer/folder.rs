//! The output folder belongs to one run: [`RunFolder::claim`] locks it
//! ([`diffuse_data::lock`]) for the whole run, refuses a new run over an existing one unless it
//! resumes or overwrites, sets an overwritten run aside until the new run's first checkpoint
//! exists, and cuts a resumed run's logs (`metrics.jsonl`, TensorBoard events, sample grids) back
//! to the checkpoint it resumes from, so that they never hold steps the weights do not have.

use super::checkpoint::newest_checkpoint;
use crate::dist::Collective;
use crate::{Error, Result};
use diffuse_data::lock::FolderLock;
use std::path::{Path, PathBuf};

/// What a run does with its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: refused if the folder already holds one.
    New,
    /// `--resume`: continue from the newest checkpoint (step 0 when there is none).
    Resume,
    /// `--overwrite`: a new run; an existing run is set aside and deleted once the new run's
    /// first checkpoint is written.
    Overwrite,
    /// Continue whatever is there, or start (`diffuse distill`, which is rerun to continue).
    Continue,
}

/// What a run leaves in its folder: the entries that make a folder "hold a run" and that
/// `--overwrite` sets aside (anything else in the folder is left alone).
pub const RUN_ENTRIES: &[&str] = &[
    "checkpoints",
    "model_index.json",
    "metrics.jsonl",
    "train.toml",
    "logs",
    "samples",
    "unet",
    "unet_ema",
    "transformer",
    "transformer_ema",
    "vae",
    "vae_ema",
    "scheduler",
];

/// Where `--overwrite` sets the previous run aside, inside the folder (beside the lock file, so
/// the folder stays locked throughout).
const ASIDE_PREFIX: &str = ".overwritten-";

/// A claimed output folder (data parallel: rank 0 holds the lock, the others follow).
#[derive(Debug)]
pub struct RunFolder {
    dir: PathBuf,
    _lock: Option<FolderLock>,
    resumes: bool,
    resumed_step: u64,
    set_aside: Option<PathBuf>,
    notes: Vec<String>,
}

impl RunFolder {
    /// Locks `dir` for `command` and readies it for a run started as `start`: refuses a new run
    /// into a folder that holds one, sets an overwritten run aside, cuts a resumed run's logs
    /// back to its newest checkpoint.
    pub fn claim(dir: &Path, start: Start, command: &str) -> Result<RunFolder> {
        let lock = FolderLock::acquire(dir, command)?;
        let mut notes = Vec::new();
        if let Some(h) = lock.taken_over() {
            notes.push(format!(
                "took over the lock of {} left by {h}, which ended without releasing it",
                dir.display()
            ));
        }
        let present: Vec<&str> = RUN_ENTRIES
            .iter()
            .copied()
            .filter(|e| dir.join(e).exists())
            .collect();
        let ckpt = newest_checkpoint(&dir.join("checkpoints"));
        let ckpt_step = ckpt.as_deref().and_then(checkpoint_step);
        let mut folder = RunFolder {
            dir: dir.to_path_buf(),
            _lock: Some(lock),
            resumes: false,
            resumed_step: 0,
            set_aside: None,
            notes,
        };
        // A run that failed before its first step (a bad config) leaves only its train.toml and
        // an empty metrics.jsonl: nothing to protect, and the corrected command may start.
        let holds_run = present.iter().any(|e| match *e {
            "train.toml" => false,
            "metrics.jsonl" => std::fs::metadata(dir.join(e)).is_ok_and(|m| m.len() > 0),
            _ => true,
        });
        match start {
            Start::New if holds_run => {
                return Err(Error::Invalid(format!(
                    "{} already holds a run ({}): continue it with --resume {}, or start over with --overwrite (the old run is kept until the new run's first checkpoint)",
                    dir.display(),
                    describe(&present, ckpt_step),
                    dir.display()
                )));
            }
            Start::New => {}
            Start::Overwrite if !present.is_empty() => {
                let aside = dir.join(format!(
                    "{ASIDE_PREFIX}{}",
                    diffuse_data::lock::utc(unix_now())
                        .trim_end_matches(" UTC")
                        .replace([' ', ':'], "-")
                ));
                let aside = unused(aside);
                std::fs::create_dir(&aside).map_err(crate::io_err(&aside))?;
                for e in &present {
                    std::fs::rename(dir.join(e), aside.join(e)).map_err(crate::io_err(&aside))?;
                }
                folder.notes.push(format!(
                    "--overwrite: the previous run ({}) is set aside in {} and deleted once this run's first checkpoint is written",
                    describe(&present, ckpt_step),
                    aside.display()
                ));
                folder.set_aside = Some(aside);
            }
            Start::Overwrite => {}
            Start::Resume | Start::Continue => {
                folder.resumes = true;
                folder.resumed_step = ckpt_step.unwrap_or(0);
                if ckpt.is_none() && start == Start::Resume {
                    if let Some(aside) = leftover_aside(dir) {
                        folder.notes.push(format!(
                            "{} has no checkpoint: starting at step 0 (an interrupted --overwrite left the run before it in {})",
                            dir.display(),
                            aside.display()
                        ));
                    }
                }
                let cut = trim_logs(dir, folder.resumed_step)?;
                if cut > 0 {
                    folder.notes.push(format!(
                        "resuming at step {}: dropped {cut} later entries from metrics.jsonl, logs/ and samples/ (the weights end at step {})",
                        folder.resumed_step, folder.resumed_step
                    ));
                }
            }
        }
        Ok(folder)
    }

    /// [`claim`](Self::claim) for one rank of a data-parallel group: rank 0 claims the folder
    /// and tells the others whether the run resumes; when rank 0 cannot claim it, every rank
    /// returns an error (none waits for a run that will not start).
    pub fn claim_rank(
        dir: &Path,
        start: Start,
        command: &str,
        comm: &dyn Collective,
    ) -> Result<RunFolder> {
        if comm.rank() == 0 {
            let claimed = RunFolder::claim(dir, start, command);
            let msg = match &claimed {
                Ok(f) => format!("ok {}", u8::from(f.resumes)),
                Err(e) => format!("error {e}"),
            };
            comm.broadcast(msg.as_bytes())?;
            return claimed;
        }
        let msg = String::from_utf8_lossy(&comm.broadcast(&[])?).into_owned();
        match msg.strip_prefix("ok ") {
            Some(r) => Ok(RunFolder {
                dir: dir.to_path_buf(),
                _lock: None,
                resumes: r == "1",
                resumed_step: 0,
                set_aside: None,
                notes: Vec::new(),
            }),
            None => Err(Error::Invalid(format!(
                "rank {}: rank 0 cannot start the run: {}",
                comm.rank(),
                msg.strip_prefix("error ").unwrap_or(&msg)
            ))),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the trainer resumes from the folder's newest checkpoint.
    pub fn resumes(&self) -> bool {
        self.resumes
    }

    /// The step the run resumes from (0 for a new run or a folder without checkpoints).
    pub fn resumed_step(&self) -> u64 {
        self.resumed_step
    }

    /// What the claim did that the user should hear of (a lock taken over, a run set aside,
    /// logs cut back), one line each; taken, so each is said once.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Deletes the run that `--overwrite` set aside once this run has a checkpoint of its own;
    /// call it after steps and at the end. Returns the deleted folder.
    pub fn settle(&mut self) -> Result<Option<PathBuf>> {
        let Some(aside) = &self.set_aside else {
            return Ok(None);
        };
        if newest_checkpoint(&self.dir.join("checkpoints")).is_none() {
            return Ok(None);
        }
        std::fs::remove_dir_all(aside).map_err(crate::io_err(aside))?;
        Ok(self.set_aside.take())
    }

    /// The step of the weights the folder holds (the checkpoint its pipeline was copied from),
    /// if it holds any.
    pub fn weights_step(&self) -> Option<u64> {
        if !self.dir.join("model_index.json").exists() && !self.dir.join("vae").is_dir() {
            return None;
        }
        newest_checkpoint(&self.dir.join("checkpoints"))
            .as_deref()
            .and_then(checkpoint_step)
    }
}

/// "checkpoints up to step 40, model_index.json, metrics.jsonl".
fn describe(present: &[&str], ckpt_step: Option<u64>) -> String {
    present
        .iter()
        .map(|e| match (*e, ckpt_step) {
            ("checkpoints", Some(s)) => format!("checkpoints up to step {s}"),
            (e, _) => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn checkpoint_step(dir: &Path) -> Option<u64> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `path`, or `path-2`, `path-3`… if it exists.
fn unused(path: PathBuf) -> PathBuf {
    let mut p = path.clone();
    let mut n = 2;
    while p.exists() {
        p = PathBuf::from(format!("{}-{n}", path.display()));
        n += 1;
    }
    p
}

/// A run set aside by an `--overwrite` that did not reach its first checkpoint.
fn leftover_aside(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(ASIDE_PREFIX))
        .map(|e| e.path())
}

/// Cuts `metrics.jsonl`, the TensorBoard event files in `logs/` and the grids in `samples/`
/// back to `step`; returns how many entries went.
fn trim_logs(dir: &Path, step: u64) -> Result<usize> {
    let mut cut = 0;
    let metrics = dir.join("metrics.jsonl");
    if let Ok(text) = std::fs::read_to_string(&metrics) {
        let mut kept = String::with_capacity(text.len());
        for line in text.lines() {
            // A line of a later step, or one cut short by a kill, goes.
            let line_step = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64());
            match line_step {
                Some(s) if s <= step => {
                    kept.push_str(line);
                    kept.push('\n');
                }
                _ => cut += 1,
            }
        }
        if kept.len() != text.len() {
            diffuse_data::fs::write_atomic(&metrics, kept.as_bytes())
                .map_err(|e| Error::Invalid(e.to_string()))?;
        }
    }
    let logs = dir.join("logs");
    for e in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
        {
            cut += crate::tensorboard::truncate_after(&e.path(), step as i64)
                .map_err(crate::io_err(&e.path()))?;
        }
    }
    let samples = dir.join("samples");
    for e in std::fs::read_dir(&samples).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let n: Option<u64> = name
            .strip_prefix("step-")
            .and_then(|r| r.strip_suffix(".png"))
            .and_then(|n| n.parse().ok());
        if n.is_some_and(|n| n > step) {
            std::fs::remove_file(e.path()).map_err(crate::io_err(&e.path()))?;
            cut += 1;
        }
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder as a run finished at step 40 leaves it (checkpoints 30 and 40).
    fn finished_run(dir: &Path) {
        for s in [30, 40] {
            let c = dir.join(format!("checkpoints/step-{s}"));
            std::fs::create_dir_all(&c).unwrap();
            std::fs::write(c.join("training_state.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(dir.join("unet")).unwrap();
        std::fs::write(dir.join("model_index.json"), "{}").unwrap();
        let lines: String = (1..=40)
            .map(|s| format!("{{\"step\":{s},\"loss\":0.5}}\n"))
            .collect();
        std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
        std::fs::create_dir_all(dir.join("samples")).unwrap();
        for s in [20, 40] {
            std::fs::write(dir.join(format!("samples/step-{s}.png")), "png").unwrap();
        }
    }

    #[test]
    fn a_new_run_into_a_run_folder_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        finished_run(dir.path());
        let e = RunFolder::claim(dir.path(), Start::New, "diffuse train")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already holds a run (checkpoints up to step 40")
                && e.contains("--resume")
                && e.contains("--overwrite")
                && !e.contains('\n'),
            "{e}"
        );
        // An empty or unrelated folder is fine, as is what a run that failed before its first
        // step leaves.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("notes.txt"), "mine").unwrap();
        std::fs::write(other.path().join("train.toml"), "[train]").unwrap();
        std::fs::write(other.path().join("metrics.jsonl"), "").unwrap();
        let f = RunFolder::claim(other.path(), Start::New, "diffuse train").unwrap();
        assert!(!f.resumes());
    }

    #[test]
    fn a_claimed_folder_refuses_a_second_claim() {
        let dir = tempfile::tempdir().unwrap();
        let _f = RunFolder::claim(dir.path(), Start::New, "diffuse train").unwrap();
        let e = RunFolder::claim(dir.path(), Start::Resume, "diffuse train")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is in use by `diffuse train`")
                && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
    }

    #[test]
    fn overwrite_sets_the_old_run_aside_until_the_first_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        finished_run(dir.path());
        let mut f = RunFolder::claim(dir.path(), Start::Overwrite, "diffuse train").unwrap();
        let notes = f.take_notes();
        assert!(notes[0].contains("set aside"), "{notes:?}");
        let aside = f.set_aside.clone().unwrap();
        for e in ["checkpoints", "unet", "model_index.json", "metrics.jsonl"] {
            assert!(!dir.path().join(e).exists(), "{e}");
            assert!(aside.join(e).exists(), "{e}");
        }
        assert!(dir.path().join("notes.txt").exists());
        // No checkpoint of the new run yet: the old run stays (a crash now loses nothing).
        assert_eq!(f.settle().unwrap(), None);
        assert!(aside.exists());
        let c = dir.path().join("checkpoints/step-5");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("training_state.json"), "{}").unwrap();
        assert_eq!(f.settle().unwrap(), Some(aside.clone()));
        assert!(!aside.exists());
    }

    #[test]
    fn resume_cuts_the_logs_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        finished_run(dir.path());
        // The newest checkpoint is 40 here; pretend the run died after step 40's checkpoint
        // was pruned away and steps up to 47 were logged, the last line torn.
        std::fs::remove_dir_all(dir.path().join("checkpoints/step-40")).unwrap();
        let mut lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        lines.push_str("{\"step\":41,\"loss\":0.4}\n{\"step\":4");
        std::fs::write(dir.path().join("metrics.jsonl"), lines).unwrap();
        let mut tb = crate::tensorboard::EventWriter::create(&dir.path().join("logs")).unwrap();
        for s in 1..=41 {
            tb.scalar("train/loss", s, 0.5).unwrap();
        }
        tb.flush().unwrap();
        let mut f = RunFolder::claim(dir.path(), Start::Resume, "diffuse train").unwrap();
        assert!(f.resumes());
        assert_eq!(f.resumed_step(), 30);
        let notes = f.take_notes();
        assert!(notes[0].contains("resuming at step 30"), "{notes:?}");
        let steps: Vec<u64> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, (1..=30).collect::<Vec<_>>());
        let records = crate::tensorboard::read_records(tb.path()).unwrap();
        assert_eq!(records.len(), 31, "file version + steps 1..=30");
        assert!(dir.path().join("samples/step-20.png").exists());
        assert!(!dir.path().join("samples/step-40.png").exists());
    }

    /// Data parallel: rank 0 claims, the others follow its decision or fail with it (none waits
    /// for a run that does not start).
    #[test]
    fn ranks_follow_rank_0s_claim() {
        let claim_all = |dir: &Path, start: Start| -> Vec<Result<RunFolder>> {
            std::thread::scope(|s| {
                let handles: Vec<_> = crate::dist::threads::ThreadGroup::new(2)
                    .into_iter()
                    .map(|g| {
                        s.spawn(move || RunFolder::claim_rank(dir, start, "diffuse train", &g))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        };
        let dir = tempfile::tempdir().unwrap();
        finished_run(dir.path());
        let ok = claim_all(dir.path(), Start::Resume);
        assert!(ok.iter().all(|r| r.as_ref().is_ok_and(|f| f.resumes())));
        drop(ok);
        let held = FolderLock::acquire(dir.path(), "diffuse train").unwrap();
        let refused = claim_all(dir.path(), Start::Resume);
        let msgs: Vec<String> = refused
            .into_iter()
            .map(|r| r.unwrap_err().to_string())
            .collect();
        assert!(msgs[0].contains("is in use by"), "{msgs:?}");
        assert!(
            msgs[1].starts_with("rank 1: rank 0 cannot start the run: ")
                && msgs[1].contains("is in use by"),
            "{msgs:?}"
        );
        drop(held);
        let refused = claim_all(dir.path(), Start::New);
        assert!(refused.iter().all(|r| r
            .as_ref()
            .is_err_and(|e| e.to_string().contains("already holds a run"))));
    }
}
