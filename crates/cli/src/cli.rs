//! The command line, as clap sees it. Nothing here does work; `settings.rs` resolves these into
//! what the commands take.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Batch data pipelines that never lose or duplicate a row.";

const LONG_ABOUT: &str = "\
strata lands raw files, runs cleaned and curated transforms in DataFusion, and publishes
versioned Parquet behind an atomic JSON pointer. Every dataset version becomes visible all at
once or not at all; rolling back is a pointer flip.

A lake is a local directory or an S3 prefix (s3://bucket/prefix). Every verb finds the project's
strata.toml in the current directory or the nearest parent (as cargo finds Cargo.toml) and uses
its lake: `[pipeline] lake = \"...\"`, or lake/ beside the file. Outside a project the lake is
./lake. --lake or STRATA_LAKE override it for every verb alike.";

const AFTER_HELP: &str = "\
Examples:
  strata publish orders --from ./exports/ --partition-by order_date
  strata versions orders
  strata query \"SELECT order_date, sum(amount) FROM orders GROUP BY 1 ORDER BY 1\"
  strata query 'SELECT count(*) FROM \"orders@1\"'
  strata rollback orders --to 1 --reason \"bad upstream file\"
  strata verify orders

Exit codes (for schedulers):
  0  success, or nothing to do
  2  usage or definition error: bad flags, a bad strata.toml or SQL, an unknown dataset, version
     or run, an input or lake problem; the one-line message says what to fix
  3  the data failed a check: a FAIL_RUN rule or gate (by default more than 5% quarantined),
     a batch missing a required column, reconciliation, `strata verify`, `strata reconcile`, a
     checksum on read; nothing was published
  4  busy: another process holds the partitions or moved the run first; retry later
  5  needs a person: a run held for review (AWAITING_REVIEW), a run left UNKNOWN, an approval
     whose datasets moved since the run was validated, a promotion whose shadow's partitions
     changed since it was built, a change to a closed period without --mode restatement
  1  internal error: unexpected; printed with its cause chain, report it";

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Where the lake is: a local directory, file:///path, or s3://bucket/prefix.
    /// [default: the project's lake (the nearest strata.toml's `[pipeline] lake`, or lake/
    /// beside it), else ./lake]
    #[arg(long, global = true, env = "STRATA_LAKE", value_name = "URL")]
    pub lake: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline: land the sources, then the cleaned and curated stages.
    #[command(long_about = RUN_LONG, after_help = RUN_AFTER)]
    Run(RunArgs),

    /// Create a small pipeline that works, to start from.
    #[command(after_help = "Example:\n  strata init shop && cd shop && strata run")]
    Init(InitArgs),

    /// Check a pipeline without running it: its definition, and every model's SQL planned
    /// against the columns its inputs will have. Reads no data and writes nothing.
    #[command(
        after_help = "Every problem found is printed, one a line, naming the model file or the \
strata.toml line; exit 2 if there is any.\n\nExample:\n  strata check\n  strata check --pipeline \
pipelines/shop/strata.toml"
    )]
    Check(CheckArgs),

    /// Show what `strata run` with the same arguments would do, and why, without doing it:
    /// the inputs, every partition it would replace, the reference bindings, whether it is a
    /// no-op. Writes nothing.
    #[command(long_about = PLAN_LONG, after_help = PLAN_AFTER)]
    Plan(PlanArgs),

    /// Land raw files (CSV, JSON lines, Parquet) in the immutable raw layer.
    #[command(long_about = LAND_LONG, after_help = LAND_AFTER)]
    Land(LandArgs),

    /// Publish Parquet files as a new version of a dataset.
    #[command(long_about = PUBLISH_LONG, after_help = PUBLISH_AFTER)]
    Publish(PublishArgs),

    /// List the datasets of the lake with their current version.
    Datasets(ListArgs),

    /// List the published versions of a dataset, marking the current one.
    Versions(DatasetArgs),

    /// Show every flip of a dataset's pointer: publishes and rollbacks.
    History(DatasetArgs),

    /// List pipeline runs with their state (newest first).
    #[command(long_about = RUNS_LONG, after_help = RUNS_AFTER)]
    Runs(RunsArgs),

    /// Show one run's manifest: parameters, inputs, outputs, stages, states and times.
    #[command(
        after_help = "Examples:\n  strata show-run 20260121T030000000Z-1a2b3c4d\n  strata show-run 20260121T030000000Z-1a2b3c4d --json"
    )]
    ShowRun(ShowRunArgs),

    /// Settle runs that stopped before finishing (crashed, killed): publish or clean them up.
    #[command(long_about = RECOVER_LONG, after_help = RECOVER_AFTER)]
    Recover(RecoverArgs),

    /// Print a version's control totals; compare it with another version or prove it against
    /// its inputs. Exit code 2 on any mismatch.
    #[command(long_about = RECONCILE_LONG, after_help = RECONCILE_AFTER)]
    Reconcile(ReconcileArgs),

    /// Publish a run held for review by a MANUAL_REVIEW gate.
    #[command(
        after_help = "Example:\n  strata runs --status AWAITING_REVIEW\n  strata approve 20260121T030000000Z-1a2b3c4d --note \"volume drop explained by the holiday\""
    )]
    Approve(ReviewArgs),

    /// Discard a run held for review: nothing of it is published.
    #[command(
        after_help = "Example:\n  strata reject 20260121T030000000Z-1a2b3c4d --note \"upstream sent a partial file\""
    )]
    Reject(ReviewArgs),

    /// Take a landed batch out of every later run's input (its files are kept, the action is
    /// recorded with who, when and why).
    #[command(long_about = RETIRE_LONG, after_help = RETIRE_AFTER)]
    Retire(RetireArgs),

    /// Put a retired batch back into the input of later runs.
    #[command(
        after_help = "Example:\n  strata unretire orders orders-2026-01-02.csv --reason \"the sender confirmed it\"\n  strata run --date 2026-01-02"
    )]
    Unretire(RetireArgs),

    /// List the batches of a source that are retired now, or with --history every retire and
    /// unretire.
    #[command(
        after_help = "Example:\n  strata retired orders\n  strata retired orders --history --json"
    )]
    Retired(RetiredArgs),

    /// Make an earlier version current again (a pointer flip: no data is read or copied).
    #[command(
        after_help = "Examples:\n  strata rollback orders --to 3 --reason \"late file was wrong\"\n  strata rollback orders --to-time 2026-12-01T06:00:00Z --reason \"undo this morning's runs\""
    )]
    Rollback(RollbackArgs),

    /// Run SQL over the lake: every dataset is a table at its current version.
    #[command(long_about = QUERY_LONG, after_help = QUERY_AFTER)]
    Query(QueryArgs),

    /// Recompute the size and sha256 of every file of a version and report any difference.
    #[command(
        long_about = "Recompute the size and sha256 of every file listed in a version record and \
                      compare them with the record.\n\nEach missing or changed file is named. Exit \
                      code 2 if any file is missing or changed."
    )]
    Verify(VerifyArgs),

    /// Close a dataset's period through a date: those partitions may change again only by a
    /// recorded restatement.
    #[command(long_about = CLOSE_LONG, after_help = CLOSE_AFTER)]
    Close(CloseArgs),

    /// List the restatements of closed periods: why, who approved, what changed.
    #[command(
        after_help = "Examples:\n  strata restatements\n  strata restatements orders --json"
    )]
    Restatements(RestatementsArgs),

    /// List the shadows (versions computed with `strata run --mode shadow`, not current), with
    /// their state and the version each holds.
    #[command(after_help = "Examples:\n  strata shadows\n  strata shadows orders --json")]
    Shadows(ShadowsArgs),

    /// Make a shadow's versions current, without recomputing them, all datasets or none.
    #[command(long_about = PROMOTE_LONG, after_help = PROMOTE_AFTER)]
    Promote(PromoteArgs),

    /// Discard a shadow: its versions, files and name (a promoted shadow loses only its name).
    #[command(after_help = "Example:\n  strata drop-shadow fix-123")]
    DropShadow(DropShadowArgs),

    /// Compare two versions row by row, by key: schema, rows identical, modified, added and
    /// removed, per column and per partition. Exit 3 when they differ beyond the thresholds.
    #[command(long_about = DIFF_LONG, after_help = DIFF_AFTER)]
    Diff(DiffArgs),

    /// List the data files of a version, for reading them with another engine.
    #[command(after_help = FILES_AFTER)]
    Files(FilesArgs),
}

const CLOSE_LONG: &str = "\
Record that a dataset's partitions dated on or before --through are closed (certified, reported,
submitted). The closing is kept in the lake with who, when and why, and shown by `strata
versions`, `strata history` and `strata plan`.

From then on, a run or promotion that would change the rows of a closed partition fails (exit 5),
naming the dataset, the partitions and the closing; recomputing a closed partition to the same
rows (a lookback, say) is not a change. Only `strata run --mode restatement --reason CODE
[--approver NAME]` publishes such a change: its version records the prior version, the reason,
the approver, every restated partition's rows and sums before and after, and the raw batches it
read that the prior version did not. `strata history` shows it as RESTATEMENT and `strata
restatements` lists them. With `restatement_review = true` in [pipeline], a restatement is held
for `strata approve` first.

A month partition is closed from its first day; a partition whose key holds no date (a dataset
not partitioned by date) is closed as soon as anything is. A closing never moves back.";

const CLOSE_AFTER: &str = "\
Examples:
  strata close orders --through 2026-01-31 --reason \"January filed with the regulator\"
  strata run --from 2026-01-01 --to 2026-01-31 --mode restatement --reason LATE-REFUNDS \\
      --approver cfo@example.com";

const PROMOTE_LONG: &str = "\
Make the versions a shadow run computed (`strata run --mode shadow --shadow NAME`) current: no
data is read or recomputed. For each dataset of the shadow:

  the pointer has not moved since the shadow was built  -> the shadow's version is made current
  it moved, but not on a partition the shadow replaces  -> the shadow's partitions are merged
                                                           onto the current version (a new
                                                           version, copy-on-write)
  it moved on a partition the shadow replaces           -> conflict: nothing is promoted, the
                                                           message names the dataset, what moved
                                                           and the partitions (exit 5)

Promotion is all-or-nothing: every version is prepared before the first pointer flips, and a
promotion killed half-way is finished (or returned to the shadow) by `strata recover` or the next
`strata promote`. History shows each flip as `promote` with the reason.";

const PROMOTE_AFTER: &str = "\
Examples:
  strata run --from 2026-01-01 --to 2026-01-31 --mode shadow --shadow fix-123
  strata diff daily_revenue \"daily_revenue@shadow:fix-123\"
  strata promote fix-123 --reason \"ticket 123: revenue excluded refunds\"";

const RECONCILE_LONG: &str = "\
Print the control totals of a dataset version: rows, exact sums of the declared columns, the
business-date range, key counts, null counts, and order-independent SHA-256 hashes of the keys and
of whole rows (the same whatever the row order or the split into files). Every pipeline run
computes them while writing and keeps them per partition in the version record.

--against M compares the version with version M, in total and partition by partition.
--input proves the version against its inputs: every file is read again and its totals compared
with the recorded ones, and the checks the run made before publishing (input = accepted +
quarantined + duplicates, raw sums = accepted + duplicates + quarantined, expected partitions,
no duplicate keys…) are shown. Exit code 2 on any mismatch.";

const RECONCILE_AFTER: &str = "\
Examples:
  strata reconcile orders
  strata reconcile orders --input
  strata reconcile daily_revenue --version 3 --against 2 --json";

const RUNS_LONG: &str = "\
List the pipeline runs recorded in the lake, newest first, with their state:

  PLANNED -> INPUT_LOCKED -> RUNNING -> VALIDATING -> COMMITTING -> PUBLISHED
  any of them -> FAILED;  COMMITTING -> UNKNOWN (the store never said whether a flip landed)

A run that is not PUBLISHED or FAILED is either still running or stopped (crashed, killed);
`strata recover` settles the stopped ones.";

const RUNS_AFTER: &str = "\
Examples:
  strata runs
  strata runs --status FAILED
  strata runs --status UNKNOWN --json";

const RECOVER_LONG: &str = "\
Settle every run that stopped before reaching PUBLISHED or FAILED (or only --run ID), from what is
durable in the lake: the run's manifest, its staged files and the dataset pointers. `strata run`
does this first, every time.

  nothing of the run was flipped   -> its staging is removed (finished stages' checksummed output
                                      is kept for the rerun to reuse), marked FAILED: run again
  every dataset was flipped        -> marked PUBLISHED
  some were flipped                -> the rest are flipped if their pointers have not moved
                                      (PUBLISHED), otherwise marked UNKNOWN with the evidence

Runs still holding a live lock (their process is running, or their lease has not expired) are
left alone, and so are runs whose partitions another process holds (settling them right now);
`--run ID` then exits 4 (busy: retry in a moment).";

const RECOVER_AFTER: &str = "\
Examples:
  strata recover
  strata recover --run 20260121T030000000Z-1a2b3c4d --json";

const RUN_LONG: &str = "\
Run the pipeline defined in strata.toml: land every source's files in the raw layer (new content
only), then build each cleaned dataset (cast to the contract, validate the rules, quarantine what
fails with the reason, deduplicate on the key) and each curated model (SQL, in dependency order).
Everything is staged first and validated; then every dataset is published through its atomic
pointer. Each step is recorded in the run's manifest (`strata runs`, `strata show-run`); a run
killed at any point is settled by `strata recover`, which every `strata run` does first.

Runs lock the partitions they write: a second run over the same partitions fails at once and
names the holder. Running again with the same pipeline version, parameters and inputs as a
published run is a no-op that says so; --force publishes a new, byte-identical version. A rerun
after a crash reuses the checksummed output of the stages the crashed run had finished.

Input files already landed are recognised by their location, size, inode and modification and
change times, and not read again; --rehash reads and hashes every input file again (unchanged
files stay no-ops, changed ones land as new batches).

--date D runs one business day: it reads and replaces only what that day owns, plus the
pipeline's lookback_days before it (to pick up late data). --from/--to run a range. With no
window, the run covers every business date found in the input and replaces the datasets whole.

The pipeline file defaults to the strata.toml in this directory or the nearest parent. The lake
is the one it names (`[pipeline] lake`), or lake/ beside it; --lake or STRATA_LAKE override it,
for this and every other verb alike.";

const RUN_AFTER: &str = "\
Examples:
  strata run                                     (the nearest strata.toml, every date)
  strata run --date 2026-01-03                   (one day, plus the lookback)
  strata run --from 2026-01-01 --to 2026-01-31 --only orders daily_revenue
  strata run --pipeline testdata/shop/strata.toml
  strata run --rehash                            (read every input file again)";

const LAND_LONG: &str = "\
Land raw files (CSV, JSON lines, Parquet) in the immutable raw layer of the lake.

Each input becomes one raw batch, _raw/<source>/batch=<sha256>/, named by the sha256 of its bytes:
landing the same content again is a no-op, and nothing in the raw layer is ever rewritten or
deleted. CSV and JSON lines land as text columns (the cleaned stage applies types); every row keeps
_line, the input line it came from. Lines that cannot be read (wrong field count, invalid UTF-8,
broken quoting, invalid JSON) are kept byte for byte in the batch's rejects with their line number
and the reason: nothing is dropped silently. Lines may end with LF, CRLF or (in a file whose first
line ends so) a lone CR.

A file already landed is recognised without reading it by its location, size, inode and
modification and change times; a file that changed less than 2 s before it was landed is read and
hashed again next time, since a change within the same time stamp tick may not show. --rehash
reads and hashes every input regardless.

Needs no pipeline file.";

const LAND_AFTER: &str = "\
Examples:
  strata land orders exports/orders-2026-01-01.csv
  strata land orders exports/                    (every .csv, .jsonl, .ndjson, .json, .parquet)
  strata land orders 'exports/orders-*.csv'      (quoted: strata expands *, ?, [...] and **)
  strata land orders 'exports/**/*.csv'          (** crosses directories; hidden names skipped)
  strata land events events.log --format jsonl
  strata land orders exports/ --rehash           (read every file again; changed ones land)";

const PUBLISH_LONG: &str = "\
Publish Parquet files as a new version of a dataset.

The rows are rewritten into the dataset's layout under <dataset>/run_id=<run>/, a version record
listing every file with its size, row count and sha256 is written, and then the dataset's pointer
is flipped. Readers see the old version or the new one, never a mix.

With --partition-by, only the partitions present in the input are replaced; every other
partition is reused from the current version without copying (copy-on-write). A dataset that is
already partitioned keeps its partitioning when --partition-by is omitted. Replacing every
partition, dropping the ones not in the input, needs --replace-all.";

const PUBLISH_AFTER: &str = "\
Examples:
  strata publish orders --from orders.parquet
  strata publish orders --from ./exports/ --partition-by order_date
  strata publish orders --from fix-2026-01-03.parquet --reason \"corrected totals\"
  strata publish orders --from full-reload/ --replace-all";

const QUERY_LONG: &str = "\
Run one SQL query over the lake with DataFusion.

Every dataset that `strata datasets` lists is a table at its current version. A published older
version is the table \"<dataset>@<version>\" (double-quoted, because of the @). Names that are not
plain lower-case SQL identifiers, such as \"cleaned.orders\" or \"Orders\", are double-quoted too.

Queries are read-only: DDL, DML and COPY are refused.";

const QUERY_AFTER: &str = "\
Examples:
  strata query \"SELECT count(*) FROM orders\"
  strata query 'SELECT * FROM \"orders@2\" EXCEPT SELECT * FROM orders' --format csv
  strata query \"SELECT order_date, sum(amount) FROM orders GROUP BY 1\" --format json";

const FILES_AFTER: &str = "\
Examples:
  strata files orders
  strata files orders --version 3 --json

With DuckDB, for instance:
  duckdb -c \"SELECT count(*) FROM read_parquet([$(strata files orders --quoted)])\"";

const PLAN_LONG: &str = "Show what `strata run` with the same arguments would do, and why, \
without doing it.\n\n\
The plan is computed by the same functions the run uses. It lists, per source, the files found \
and those not landed yet; for every dataset the run would write, the partitions it would replace \
and why (in the window, a lookback day, a whole month, downstream of an input recomputed on that \
date, rolling-window spillover from reads_days), or why it is replaced whole; the version each \
reference would be read at; and whether the run would be a no-op. Nothing is written: no file \
is landed, no lock taken, no manifest created.";

const PLAN_AFTER: &str = "Examples:\n  strata plan --date 2026-01-03\n  strata plan --from 2026-01-01 --to 2026-01-31 --only daily_revenue --json\n  strata plan --graph";

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Print the dataset graph (text, then Mermaid) instead of the plan.
    #[arg(long)]
    pub graph: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file. [default: strata.toml in this directory or the nearest parent]
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,

    /// Run one business date (YYYY-MM-DD).
    #[arg(long, value_name = "D", conflicts_with_all = ["from", "to"])]
    pub date: Option<String>,

    /// Let this pipeline take over DATASET, which another writer owns (published with `strata
    /// publish`, or by another pipeline); the run refuses otherwise. Repeatable.
    #[arg(long, value_name = "DATASET")]
    pub adopt: Vec<String>,

    /// Read the latest version of every reference pinned `as_originally_run`, instead of the
    /// version the runs that published these dates read (a restatement with new reference data).
    #[arg(long)]
    pub refresh_references: bool,

    /// First business date of a range (YYYY-MM-DD).
    #[arg(long, value_name = "D", requires = "to")]
    pub from: Option<String>,

    /// Last business date of a range (YYYY-MM-DD), inclusive.
    #[arg(long, value_name = "D", requires = "from")]
    pub to: Option<String>,

    /// Only these datasets: names, globs (`'daily_*'`), `+X` (X and everything it reads) or
    /// `X+` (X and everything that reads it, each over the dates X's change affects).
    #[arg(long, value_name = "SELECTOR", num_args = 1..)]
    pub only: Vec<String>,

    /// With --only: also everything downstream of each dataset selected (as `X+`).
    #[arg(long, requires = "only")]
    pub downstream: bool,

    /// Run even if a published run already computed exactly this (same pipeline version,
    /// parameters and inputs); publishes a new, byte-identical version.
    #[arg(long)]
    pub force: bool,

    /// Read and hash every input file of every source again instead of recognising the files
    /// already landed by their identity (location, size, inode, modification and change times).
    /// Unchanged files stay no-ops; a changed file lands as a new batch.
    #[arg(long)]
    pub rehash: bool,

    /// How the run publishes what it computed. replace: replace the published partitions.
    /// dry-run: compute and validate, keep nothing. shadow: publish to the shadow --shadow NAME,
    /// leaving every pointer alone (`strata promote NAME` makes it current). compare-only:
    /// compute, validate and diff against the published versions; keep only the report.
    /// restatement: replace partitions of a closed period (`strata close`), with --reason CODE
    /// and optionally --approver NAME, recorded in the version.
    #[arg(long, value_enum, default_value_t = Mode::Replace)]
    pub mode: Mode,

    /// The shadow to publish to, with --mode shadow (letters, digits, '_', '-', '.').
    #[arg(long, value_name = "NAME")]
    pub shadow: Option<String>,

    /// With --mode restatement: the reason code recorded with the restatement.
    #[arg(long, value_name = "CODE")]
    pub reason: Option<String>,

    /// With --mode restatement: who approved it (recorded).
    #[arg(long, value_name = "NAME")]
    pub approver: Option<String>,

    /// Print the stage reports as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--mode` of `strata run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Replace,
    DryRun,
    Shadow,
    CompareOnly,
    Restatement,
}

#[derive(Debug, Args)]
pub struct CloseArgs {
    /// The dataset.
    pub dataset: String,

    /// The last business date closed (YYYY-MM-DD).
    #[arg(long, value_name = "D")]
    pub through: String,

    /// Why (recorded with the closing).
    #[arg(long)]
    pub reason: Option<String>,

    /// Print the closing as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestatementsArgs {
    /// Only this dataset's.
    pub dataset: Option<String>,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShadowsArgs {
    /// Only the shadows holding this dataset.
    pub dataset: Option<String>,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The shadow.
    pub name: String,

    /// Why, recorded in every pointer entry the promotion writes.
    #[arg(long)]
    pub reason: Option<String>,

    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DropShadowArgs {
    /// The shadow.
    pub name: String,

    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The dataset.
    pub dataset: String,

    /// The version [default: the current one].
    #[arg(long, value_name = "N", conflicts_with = "shadow")]
    pub version: Option<u64>,

    /// The version shadow NAME holds.
    #[arg(long, value_name = "NAME")]
    pub shadow: Option<String>,

    /// Compare with this version.
    #[arg(long, value_name = "M", conflicts_with = "input")]
    pub against: Option<u64>,

    /// Prove the version against its inputs: re-read its files and show the run's checks.
    #[arg(long)]
    pub input: bool,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// The run id (`strata runs --status AWAITING_REVIEW` lists them).
    pub run_id: String,

    /// Why; recorded in the run's manifest and the version records.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs in this state (PLANNED, INPUT_LOCKED, RUNNING, VALIDATING, COMMITTING,
    /// PUBLISHED, FAILED, UNKNOWN).
    #[arg(long, value_name = "STATE")]
    pub status: Option<String>,

    /// Print as JSON (the latest manifest entry of each run).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowRunArgs {
    /// The run id (as `strata runs` lists it).
    pub run_id: String,

    /// Print the whole log as JSON (every entry, oldest first).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Only this run.
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,

    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The pipeline file. [default: strata.toml in this directory or the nearest parent]
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to create the pipeline.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LandFormat {
    Csv,
    Jsonl,
    Parquet,
}

#[derive(Debug, Args)]
pub struct LandArgs {
    /// The raw source to land into (a dataset-style name, e.g. `orders`).
    pub source: String,

    /// Files, directories (searched recursively) or glob patterns (`*`, `?`, `[...]`, `**`).
    #[arg(required = true, value_name = "FILE|DIR|GLOB")]
    pub inputs: Vec<String>,

    /// The input format [default: from each file's extension].
    #[arg(long, value_enum)]
    pub format: Option<LandFormat>,

    /// CSV field delimiter (one ASCII character).
    #[arg(long, default_value_t = ',')]
    pub delimiter: char,

    /// Read and hash every input again instead of recognising the files already landed by their
    /// identity (location, size, inode, modification and change times). Unchanged files stay
    /// no-ops; a changed file lands as a new batch.
    #[arg(long)]
    pub rehash: bool,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Dataset to publish into (created by its first publish).
    pub dataset: String,

    /// A Parquet file, or a directory searched recursively for *.parquet. Repeatable.
    #[arg(long = "from", value_name = "PATH", required = true, num_args = 1..)]
    pub from: Vec<PathBuf>,

    /// Partition the dataset by this column (repeatable, outermost first). Partition values
    /// become directories: <col>=<value>.
    #[arg(long = "partition-by", value_name = "COL")]
    pub partition_by: Vec<String>,

    /// Replace every partition: the new version holds only the input's rows.
    #[arg(long)]
    pub replace_all: bool,

    /// Why this version is published; recorded in the version record and the history.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// The dataset.
    pub dataset: String,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

const RETIRE_LONG: &str = "Take a landed batch out of the input of every later run.\n\n\
A source file that was withdrawn, sent twice under two names, or landed by mistake keeps \
contributing its rows to every run that reads its dates. `strata retire` records, in the \
source's retirement log (_raw/<source>/_retired/), that the batch is retired: who, when and why. \
The raw batch itself is never changed or deleted. Every later run leaves it out of its input \
boundary, so the next run over its dates recomputes them without it (the run is not \"nothing \
to do\"); a full `strata run` recomputes every date. `strata unretire` puts it back.\n\n\
BATCH is the batch id (as `_batch` in a quarantine, or `strata runs`/`show-run` list it), a \
unique prefix of it, or the name of the file it was landed from.";

const RETIRE_AFTER: &str = "Examples:\n  strata retire orders orders-2026-01-02.csv --reason \"withdrawn by the sender, ticket 4711\"\n  strata retire orders 9f2c1ab4 --reason \"duplicate of orders-2026-01-02.csv\"\n  strata run --date 2026-01-02\n  strata retired orders";

#[derive(Debug, Args)]
pub struct RetireArgs {
    /// The source the batch was landed into.
    pub source: String,

    /// The batch: its id, a unique prefix of it, or the name of the file it was landed from.
    pub batch: String,

    /// Why; recorded with who and when.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetiredArgs {
    /// The source.
    pub source: String,

    /// Every retire and unretire, oldest first, instead of the batches retired now.
    #[arg(long)]
    pub history: bool,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The dataset.
    pub dataset: String,

    /// The published version to make current.
    #[arg(
        long,
        value_name = "VERSION",
        required_unless_present = "to_time",
        conflicts_with = "to_time"
    )]
    pub to: Option<u64>,

    /// Make current the version that was current at this instant (RFC 3339, e.g.
    /// 2026-12-01T10:00:00Z), found in the pointer history.
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,

    /// Why; recorded in the history.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// A JSON array of objects.
    Json,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL query.
    pub sql: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

const DIFF_LONG: &str = "Compare two versions row by row, by key.\n\n\
A and B are datasets at their current version (`orders`), at a version (`\"orders@3\"`), or two \
datasets. Rows are matched on the key (by default the dataset's key, as its control totals \
record it; --key to choose), with NULL parts of a composite key matching NULL. Each matched row \
is identical or modified; a row only in B is added, only in A removed. A key with more than one \
row on a side is reported as a duplicate, and its rows are not classified.\n\n\
Partitions whose recorded row hashes are equal on both sides are identical without reading a \
file, so diffing a one-day change in a year of history reads that day. The report gives the \
schema difference, the counts, per column the rows that differ, the nulls and (for numbers) the \
exact sums on each side and their delta, per partition what changed, and sample rows.\n\n\
Exit codes: 0 identical (or a difference within --max-changed-rows / --max-changed-ratio), 3 \
they differ, 2 a usage error.";

const DIFF_AFTER: &str = "Examples:\n  strata diff \"orders@3\" orders\n  strata diff \"daily_revenue@7\" daily_revenue --tolerance revenue=0.005 --limit 10\n  strata diff \"orders@3\" orders --max-changed-ratio 0.01 --json --save diff.json";

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first side (the old one): `orders`, `"orders@3"`.
    pub a: String,

    /// The second side (the new one).
    pub b: String,

    /// A key column (repeat for a composite key). Default: the dataset's recorded key.
    #[arg(long, value_name = "COLUMN")]
    pub key: Vec<String>,

    /// Compare only these columns (comma-separated), besides the key.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    pub columns: Option<Vec<String>>,

    /// Compare only the rows of both sides this SQL condition selects.
    #[arg(long = "where", value_name = "SQL")]
    pub filter: Option<String>,

    /// Sample rows shown per class.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub limit: usize,

    /// A floating-point column's tolerance: values closer than this are equal (repeatable).
    #[arg(long, value_name = "COLUMN=VALUE")]
    pub tolerance: Vec<String>,

    /// Pass (exit 0) when at most N rows changed.
    #[arg(long, value_name = "N")]
    pub max_changed_rows: Option<u64>,

    /// Pass (exit 0) when at most this fraction of the rows changed (0.01 = 1%).
    #[arg(long, value_name = "RATIO")]
    pub max_changed_ratio: Option<f64>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Keep the report as evidence: in the manifest of the shadow run when a side is a shadow
    /// (`orders@shadow:NAME`), and as JSON in FILE when one is given.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub save: Option<Option<std::path::PathBuf>>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The dataset.
    pub dataset: String,

    /// The version to verify [default: the current one].
    #[arg(long, value_name = "N", conflicts_with = "shadow")]
    pub version: Option<u64>,

    /// Verify the version shadow NAME holds.
    #[arg(long, value_name = "NAME")]
    pub shadow: Option<String>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    /// The dataset.
    pub dataset: String,

    /// The version [default: the current one].
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,

    /// Print as JSON, with partition, size, rows and sha256 of each file.
    #[arg(long, conflicts_with = "quoted")]
    pub json: bool,

    /// Print the locations single-quoted and comma-separated, ready for a SQL list.
    #[arg(long)]
    pub quoted: bool,
}
