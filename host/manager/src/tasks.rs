//! Scheduled tasks: the `[[tasks]]` manifest table, its compiled form (schedule, input,
//! limits), and what the manager reports of each task ([`TaskInfo`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The shortest `every` (shorter ones would be a busy loop, not a schedule).
pub const MIN_EVERY: Duration = Duration::from_millis(10);

/// One `[[tasks]]` entry: a call the manager makes on a schedule, through the plugin's
/// supervisor like any call.
///
/// ```toml
/// [[tasks]]
/// name = "refresh"
/// every = "30s"              # or cron = "*/5 * * * *" (UTC; 6 fields adds seconds)
/// input = { full = true }    # the call's input (default {})
/// timeout = "10s"            # the call's deadline (default: the plugin's call timeout)
/// overlap = "skip"           # "skip" (default) | "queue": a run due while one runs
/// jitter = "2s"              # each run starts up to this much later, at random
/// run_at_start = false       # also run once as soon as the plugin is loaded
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskManifest {
    /// Its name, unique within the plugin (letters, digits, `-`, `_`).
    pub name: String,
    /// A fixed period (`"100ms"`, `"30s"`, `"5m"`, `"1h"`).
    #[serde(default)]
    pub every: Option<String>,
    /// A cron expression, evaluated in UTC.
    #[serde(default)]
    pub cron: Option<String>,
    /// The input of each run (default `{}`).
    #[serde(default)]
    pub input: Option<toml::Value>,
    /// A named method to call instead of `execute`. Named methods are not supported yet, so
    /// a manifest that sets it is refused.
    #[serde(default)]
    pub method: Option<String>,
    /// The deadline of each run (default: the plugin's call timeout).
    #[serde(default)]
    pub timeout: Option<String>,
    /// What a run that comes due while the previous one still runs does.
    #[serde(default)]
    pub overlap: Overlap,
    /// A random delay of up to this much before each run.
    #[serde(default)]
    pub jitter: Option<String>,
    /// Also run once as soon as the plugin is loaded.
    #[serde(default)]
    pub run_at_start: bool,
}

/// What a run that comes due while the previous one still runs does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// It is skipped (counted); the schedule goes on from the next point after now.
    #[default]
    Skip,
    /// It waits for the running one and then runs (missed points are coalesced into one).
    Queue,
}

/// When a task runs.
#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    /// Every fixed period, from the load.
    Every(Duration),
    /// At the points of a cron expression (UTC).
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// The wall-clock time of the first point strictly after `after`.
    pub(crate) fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match self {
            Self::Every(period) => Some(after + *period),
            Self::Cron(cron) => {
                let from = chrono::DateTime::<chrono::Utc>::from(after);
                let next = cron.find_next_occurrence(&from, false).ok()?;
                Some(SystemTime::from(next))
            }
        }
    }
}

/// A task ready to run: its manifest entry compiled.
#[derive(Debug, Clone)]
pub(crate) struct TaskPlan {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    /// `every 30s` or `cron */5 * * * *`, for people.
    pub(crate) text: String,
    pub(crate) input: Value,
    pub(crate) timeout: Option<Duration>,
    pub(crate) overlap: Overlap,
    pub(crate) jitter: Duration,
    pub(crate) run_at_start: bool,
}

impl TaskManifest {
    /// Rules serde cannot express: exactly one of `every`/`cron`, valid durations and cron.
    pub(crate) fn check(&self) -> Result<(), (Option<&'static str>, String)> {
        self.plan().map(drop)
    }

    /// The compiled task.
    ///
    /// # Errors
    /// The key at fault and what is wrong with it.
    pub(crate) fn plan(&self) -> Result<TaskPlan, (Option<&'static str>, String)> {
        let name = &self.name;
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            let why = format!("[[tasks]] name {name:?} must be letters, digits, '-' or '_'");
            return Err((Some("name"), why));
        }
        let at = |key: &'static str, why: String| (Some(key), format!("task {name:?}: {why}"));
        if self.method.is_some() {
            let why = "method: named methods are not supported yet; tasks call execute".to_owned();
            return Err(at("method", why));
        }
        let (schedule, text) = match (&self.every, &self.cron) {
            (Some(every), None) => {
                let period = duration("every", every).map_err(|w| at("every", w))?;
                if period < MIN_EVERY {
                    return Err(at(
                        "every",
                        format!("every = {every:?} is below {MIN_EVERY:?}"),
                    ));
                }
                (Schedule::Every(period), format!("every {every}"))
            }
            (None, Some(cron)) => {
                let parsed = croner::Cron::from_str(cron)
                    .map_err(|e| at("cron", format!("cron = {cron:?}: {e}")))?;
                (Schedule::Cron(Box::new(parsed)), format!("cron {cron}"))
            }
            _ => {
                let why =
                    "give exactly one of every = \"30s\" or cron = \"*/5 * * * *\"".to_owned();
                return Err(at("every", why));
            }
        };
        let timeout = self
            .timeout
            .as_deref()
            .map(|t| duration("timeout", t))
            .transpose()
            .map_err(|w| at("timeout", w))?;
        let jitter = self
            .jitter
            .as_deref()
            .map(|j| duration("jitter", j))
            .transpose()
            .map_err(|w| at("jitter", w))?
            .unwrap_or_default();
        let input = match &self.input {
            Some(v) => serde_json::to_value(v).map_err(|e| at("input", e.to_string()))?,
            None => Value::Object(Default::default()),
        };
        Ok(TaskPlan {
            name: name.clone(),
            schedule,
            text,
            input,
            timeout,
            overlap: self.overlap,
            jitter,
            run_at_start: self.run_at_start,
        })
    }
}

/// `text` as a duration (`"100ms"`, `"30s"`, `"1h 30m"`).
fn duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{key} = {text:?} is not a duration like \"30s\" or \"100ms\": {e}"))
}

/// Checks a plugin's tasks: each valid, names unique.
pub(crate) fn check_all(tasks: &[TaskManifest]) -> Result<(), (Option<&'static str>, String)> {
    for (i, task) in tasks.iter().enumerate() {
        task.check()?;
        if tasks[..i].iter().any(|t| t.name == task.name) {
            let why = format!("two [[tasks]] are named {:?}", task.name);
            return Err((Some("name"), why));
        }
    }
    Ok(())
}

/// What `GET /api/plugins/{id}/tasks` (and `PluginInfo.tasks`) shows of a task.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskInfo {
    /// Its name.
    pub name: String,
    /// `every 30s` or `cron */5 * * * *`.
    pub schedule: String,
    /// What a run due while one runs does.
    pub overlap: Overlap,
    /// True while a run is in progress.
    pub running: bool,
    /// Runs started (finished or not).
    pub runs: u64,
    /// Runs that failed (error, crash, timeout).
    pub failures: u64,
    /// Runs skipped: due while one ran (`overlap = "skip"`), or while the plugin was failed.
    pub skipped: u64,
    /// When the last run started, ms since the Unix epoch.
    pub last_started_ms: Option<u64>,
    /// How long the last finished run took, ms.
    pub last_duration_ms: Option<f64>,
    /// `ok`, `failed`, `skipped` (still running) or `paused` (the plugin was failed).
    pub last_outcome: Option<String>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// How late the last scheduled run started, ms (jitter not counted).
    pub last_late_ms: Option<f64>,
    /// When the next run is due, ms since the Unix epoch (during a run, the point after it).
    pub next_run_ms: Option<u64>,
}

impl TaskInfo {
    /// A task that has not run yet.
    pub(crate) fn new(plan: &TaskPlan) -> Self {
        Self {
            name: plan.name.clone(),
            schedule: plan.text.clone(),
            overlap: plan.overlap,
            running: false,
            runs: 0,
            failures: 0,
            skipped: 0,
            last_started_ms: None,
            last_duration_ms: None,
            last_outcome: None,
            last_error: None,
            last_late_ms: None,
            next_run_ms: None,
        }
    }
}

/// `time` as ms since the Unix epoch.
pub(crate) fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: &str) -> Result<TaskPlan, String> {
        let text = format!("name = \"t\"\n{extra}");
        let manifest: TaskManifest = toml::from_str(&text).map_err(|e| e.to_string())?;
        manifest.plan().map_err(|(_, why)| why)
    }

    #[test]
    fn a_task_has_exactly_one_valid_schedule() {
        let every = task("every = \"250ms\"\ninput = { n = 1 }").unwrap();
        assert!(matches!(every.schedule, Schedule::Every(d) if d == Duration::from_millis(250)));
        assert_eq!(every.input, serde_json::json!({"n": 1}));
        assert_eq!(every.text, "every 250ms");
        let cron = task("cron = \"*/5 * * * *\"\njitter = \"1s\"").unwrap();
        assert_eq!(cron.jitter, Duration::from_secs(1));
        assert!(task("").unwrap_err().contains("exactly one"));
        assert!(task("every = \"1s\"\ncron = \"* * * * *\"").is_err());
        assert!(task("every = \"soon\"")
            .unwrap_err()
            .contains("not a duration"));
        assert!(task("every = \"1ms\"").unwrap_err().contains("below"));
        assert!(task("cron = \"61 * * * *\"").unwrap_err().contains("cron"));
        assert!(task("every = \"1s\"\nmethod = \"shout\"")
            .unwrap_err()
            .contains("named methods"));
        assert!(task("every = \"1s\"\ntimeout = \"x\"")
            .unwrap_err()
            .contains("timeout"));
    }

    #[test]
    fn cron_points_come_in_order_and_every_adds_its_period() {
        let cron = task("cron = \"*/5 * * * *\"").unwrap().schedule;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000); // a minute boundary
        let first = cron.next_after(t0).unwrap();
        assert_eq!(first.duration_since(t0).unwrap(), Duration::from_secs(300));
        let second = cron.next_after(first).unwrap();
        assert_eq!(
            second.duration_since(first).unwrap(),
            Duration::from_secs(300)
        );
        let every = Schedule::Every(Duration::from_secs(2));
        assert_eq!(every.next_after(t0).unwrap(), t0 + Duration::from_secs(2));
    }

    #[test]
    fn task_names_are_unique() {
        let t: TaskManifest = toml::from_str("name = \"a\"\nevery = \"1s\"").unwrap();
        let err = check_all(&[t.clone(), t]).unwrap_err();
        assert!(err.1.contains("two [[tasks]]"), "{}", err.1);
    }
}
