//! Run progress for people: a live bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use comfyrs_runtime::events::{Event, EventSink};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    mode: Mode,
}

enum Mode {
    Silent,
    Bar(Mutex<Option<ProgressBar>>),
    Lines,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Silent
        } else if std::io::stderr().is_terminal() {
            Mode::Bar(Mutex::new(None))
        } else {
            Mode::Lines
        };
        Progress { mode }
    }
}

impl EventSink for Progress {
    fn emit(&self, event: &Event) {
        match &self.mode {
            Mode::Silent => {}
            Mode::Lines => match event {
                Event::Executed { node, class_type, seconds, .. } => eprintln!("  ran node {node} ({class_type}) in {}", fmt_secs(*seconds)),
                Event::Progress { node, value, max, .. } => eprintln!("  node {node}: {value}/{max}"),
                Event::Error { node, class_type, message, .. } => eprintln!("  node {node} ({class_type}) failed: {message}"),
                Event::Interrupted { .. } => eprintln!("  interrupted"),
                _ => {}
            },
            Mode::Bar(bar) => {
                let mut bar = bar.lock().unwrap();
                match event {
                    Event::Start { nodes, .. } => {
                        let pb = ProgressBar::with_draw_target(Some(*nodes as u64), ProgressDrawTarget::stderr_with_hz(12));
                        pb.set_style(
                            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} nodes {elapsed} {msg}")
                                .unwrap()
                                .progress_chars("=> "),
                        );
                        pb.enable_steady_tick(Duration::from_millis(120));
                        *bar = Some(pb);
                    }
                    Event::Expanded { nodes, .. } => {
                        if let Some(pb) = bar.as_ref() {
                            pb.inc_length(*nodes as u64);
                        }
                    }
                    Event::Executing { node, class_type, .. } => {
                        if let Some(pb) = bar.as_ref() {
                            pb.set_message(format!("node {node} ({class_type})"));
                        }
                    }
                    Event::Progress { node, value, max, .. } => {
                        if let Some(pb) = bar.as_ref() {
                            pb.set_message(format!("node {node}: {value}/{max}"));
                        }
                    }
                    Event::Executed { .. } => {
                        if let Some(pb) = bar.as_ref() {
                            pb.inc(1);
                        }
                    }
                    Event::Error { node, class_type, message, .. } => {
                        if let Some(pb) = bar.as_ref() {
                            pb.println(format!("node {node} ({class_type}) failed: {message}"));
                        }
                    }
                    Event::Done { .. } => {
                        if let Some(pb) = bar.take() {
                            pb.finish_and_clear();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

pub fn fmt_secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}
