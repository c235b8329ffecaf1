//! The one error type of `strata-runs`.

use strata_publish::ErrorClass;

use crate::run_state::RunState;

/// What can go wrong while running, deciding or recovering a run.
///
/// Storage and transform errors keep their own types ([`Error::Lake`], [`Error::Transform`]);
/// what is about runs has a case of its own, so that the binary can tell a scheduler what
/// happened ([`Error::class`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lake or dataset problem (not found, corrupt, conflict, locked…).
    #[error(transparent)]
    Lake(#[from] strata_publish::Error),

    /// A problem of the pipeline's definition, SQL or data while computing a stage.
    #[error(transparent)]
    Transform(#[from] strata_medallion::Error),

    /// The run named is still running (its lock is live), or its partitions are held by a
    /// process settling it right now.
    #[error(
        "run {run_id} is {} (pid {} on {}, lease until {}); wait for it, or stop that process and \
         run `strata recover` again",
        if holder.run_id == *run_id { "still running" } else { "held by another run" },
        holder.pid, holder.host, holder.expires_at.to_rfc3339()
    )]
    StillRunning { run_id: String, holder: Box<strata_publish::locks::LockInfo> },

    /// A stopped run that may have flipped some of the partitions this run writes is not
    /// settled yet (another process may be recovering it right now).
    #[error(
        "run {run_id} ({state}) stopped while publishing partitions this run writes and is not \
         settled yet (another process may be recovering it right now); nothing was written. Run \
         `strata recover`, then run again"
    )]
    Unsettled { run_id: String, state: crate::run_state::RunState },

    /// Another process moved the run first: it created entry `entry` of the run's log, which
    /// this process was about to create. This process stopped before doing anything.
    #[error(
        "run {run_id} was moved by another process at the same moment (it wrote entry {entry} of \
         the run's log first); this command did nothing. `strata show-run {run_id}` shows where \
         the run is now"
    )]
    RunMoved { run_id: String, entry: u32 },

    /// The run stalled past its lock's lease (a paused process, a suspended machine), and another
    /// process took it over and settled it meanwhile; this process stopped without touching it.
    #[error(
        "run {run_id} stalled past its lock's lease and another process took it over: the run is \
         {state} now ({what}). This process did nothing more; `strata show-run {run_id}` shows \
         the run"
    )]
    TakenOver { run_id: String, state: RunState, what: String },

    /// A run's output was validated against a version of a dataset that is no longer current,
    /// and what the run writes changed since: publishing it would overwrite newer data, or
    /// publish it on a base another of its datasets no longer matches.
    #[error("run {run_id} cannot publish {dataset:?}: {detail}. Nothing more of the run was published; {next}")]
    BaseMoved { run_id: String, dataset: String, detail: String, next: String },

    /// The run would write a dataset that someone else owns.
    #[error(
        "{dataset:?} is written by {owner}, not by pipeline {pipeline}; a pipeline does not \
         overwrite a dataset it does not own, and nothing was run. Rename the pipeline's \
         dataset, or pass --adopt {dataset} to let pipeline {pipeline} take it over"
    )]
    NotOwner { dataset: String, owner: String, pipeline: String },

    /// The run id is not in the lake.
    #[error("no run {run_id:?} in lake {lake}; `strata runs` lists the runs")]
    NoSuchRun { run_id: String, lake: String },

    /// A run id was asked for that cannot be one.
    #[error("{0:?} is not a run id; `strata runs` lists them")]
    NotARunId(String),

    /// The run id was recorded already: a run id is used once.
    #[error(
        "run {0} is already recorded; a run id is used once (`strata show-run {0}` shows that run)"
    )]
    AlreadyRecorded(String),

    /// The command asks for a state the run is not in (approving a run that is not held,
    /// recovering a settled one…); the message says what to do instead.
    #[error("{message}")]
    WrongState { run_id: String, state: RunState, message: String },

    /// A definition problem found while planning the run (`--only` names no dataset, a model
    /// reads a dataset nothing published).
    #[error("{0}")]
    Plan(String),

    /// A reference pinned `as_originally_run` was read at different contents by the runs that
    /// published the dates this run recomputes.
    #[error(
        "{reference} is pinned as_originally_run, but the dates this run recomputes were \
         published by runs that read different versions of it ({bound}); a run reads one \
         version. Run the dates of each separately (`strata show-run <run>` shows their \
         windows), or pass --refresh-references to read the latest"
    )]
    PinConflict { reference: String, bound: String },

    /// A model reads a dataset with no published version, which this run does not compute.
    #[error(
        "the models read {dataset:?}, which has no published version yet; {}",
        if *of_the_lake {
            format!("publish it first (`strata publish {dataset} --from FILE`)")
        } else {
            format!("run the pipeline without --only, or with --only {dataset} first")
        }
    )]
    NotPublished { dataset: String, of_the_lake: bool },

    /// The version a policy chose for an input cannot be read.
    #[error(
        "{dataset} is bound to version {version} ({how}), which cannot be read ({detail}); \
         `strata versions {dataset}` lists its versions: pin one that is published"
    )]
    UnreadablePin {
        dataset: String,
        version: u64,
        how: strata_medallion::types::Pin,
        detail: String,
    },

    /// The output does not reconcile with its input: nothing was published.
    #[error(
        "reconciliation failed, nothing was published: {failed}. The output does not match its \
         input: when a failed check is a model's reconcile sum, the model's SQL drops or repeats \
         rows (an inner join without a match, a filter) and the fix is in the model; otherwise \
         report this with run id {run_id}"
    )]
    Reconciliation { run_id: String, failed: String },

    /// A quality gate whose severity is FAIL_RUN fired: nothing was published.
    #[error(
        "{dataset} {source_name}: {detail}; its severity is FAIL_RUN, so nothing was published. \
         Fix the input or the gate, then run again"
    )]
    GateFailed { dataset: String, source_name: String, detail: String },

    /// A model's SQL failed on its data (a division by zero, a cast that fails).
    #[error(
        "models.{model} failed on its data: {cause}. Fix its SQL ({sql}), for example with \
         NULLIF or TRY_CAST; nothing was published"
    )]
    ModelFailed { model: String, cause: String, sql: String },

    /// A staged file of a held run no longer matches what the run recorded for it.
    #[error(
        "run {run_id}: staged file {path} is {problem} ({expected} expected, {found} found); it \
         cannot be published. `strata reject {run_id}` and run again"
    )]
    StagedDamaged { run_id: String, path: String, problem: String, expected: String, found: String },

    /// A shadow of that name exists already.
    #[error(
        "a shadow named {name:?} exists already (run {run_id}); choose another --shadow name, or \
         `strata drop-shadow {name}` first"
    )]
    ShadowExists { name: String, run_id: String },

    /// The shadow cannot be promoted or dropped in the state its run is in.
    #[error("shadow {name:?} (run {run_id}) is {state}: {message}")]
    ShadowState { name: String, run_id: String, state: RunState, message: String },

    /// A run changed while recovery was settling it.
    #[error(
        "run {run_id} changed while being recovered ({detail}); run `strata recover --run \
         {run_id}` again"
    )]
    ChangedDuringRecovery { run_id: String, detail: String },

    /// strata asked its own state machine for a move it does not allow: a bug.
    #[error("run {run_id}: a run cannot go from {from} to {to}; this is a bug in strata")]
    InvalidTransition { run_id: String, from: RunState, to: RunState },

    /// A run manifest could not be serialised (a bug: every manifest is serialisable).
    #[error("cannot serialise the manifest of run {run_id}")]
    Serialize {
        run_id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What a scheduler should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Lake(e) => e.class(),
            Error::Transform(e) => e.class(),
            Error::StillRunning { .. }
            | Error::Unsettled { .. }
            | Error::RunMoved { .. }
            | Error::TakenOver { .. }
            | Error::ChangedDuringRecovery { .. } => ErrorClass::Busy,
            Error::BaseMoved { .. } => ErrorClass::NeedsPerson,
            Error::Reconciliation { .. }
            | Error::GateFailed { .. }
            | Error::StagedDamaged { .. } => ErrorClass::CheckFailed,
            Error::NoSuchRun { .. }
            | Error::NotARunId(_)
            | Error::NotOwner { .. }
            | Error::AlreadyRecorded(_)
            | Error::WrongState { .. }
            | Error::Plan(_)
            | Error::PinConflict { .. }
            | Error::NotPublished { .. }
            | Error::UnreadablePin { .. }
            | Error::ModelFailed { .. }
            | Error::ShadowExists { .. } => ErrorClass::User,
            Error::ShadowState { state, .. } => match state {
                RunState::Committing => ErrorClass::Busy,
                RunState::Unknown => ErrorClass::NeedsPerson,
                _ => ErrorClass::User,
            },
            Error::InvalidTransition { .. } | Error::Serialize { .. } => ErrorClass::Internal,
        }
    }
}
