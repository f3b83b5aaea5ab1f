//! `train.max_minutes` as a schedule, not a cut: the run times its first steps, turns the
//! minutes left into a step count and ends its LR schedule there, so "train for 15 minutes"
//! gives an annealed model. The plan and the minutes used so far go into every checkpoint: a
//! resumed run keeps the same plan (its steps are then those of an uninterrupted run, bit for
//! bit) and spends only the minutes that are left. The budget still stops a run that reaches
//! it before its plan (a busier machine), as Ctrl-C does.

use std::time::Instant;

/// Steps of an invocation left untimed (first allocations, the loader filling up).
const SKIP: u64 = 2;
/// Steps timed for the plan.
const TIMED: u64 = 20;
/// The share of the minutes left that the plan fills; the rest covers checkpoints, grids and
/// evaluations, which the timed steps need not include.
const SAFETY: f64 = 0.95;

/// What a checkpoint records of the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BudgetState {
    /// Seconds of training loop spent by this and earlier invocations.
    pub(super) elapsed_s: f64,
    /// The step the schedule ends at, once planned.
    pub(super) planned_steps: Option<u64>,
}

/// The wall-clock budget of one invocation of a run.
#[derive(Debug)]
pub(super) struct Budget {
    budget_s: f64,
    before_s: f64,
    started: Instant,
    /// This invocation's steps so far, and when the timed window began.
    steps: u64,
    window: Option<Instant>,
    planned: Option<u64>,
}

impl Budget {
    /// `minutes` in all, continuing `resumed` (a checkpoint's record) when given.
    pub(super) fn new(minutes: f64, resumed: Option<BudgetState>) -> Self {
        Budget {
            budget_s: minutes * 60.0,
            before_s: resumed.map_or(0.0, |r| r.elapsed_s),
            started: Instant::now(),
            steps: 0,
            window: None,
            planned: resumed.and_then(|r| r.planned_steps),
        }
    }

    pub(super) fn planned(&self) -> Option<u64> {
        self.planned
    }

    pub(super) fn state(&self) -> BudgetState {
        BudgetState {
            elapsed_s: self.elapsed_s(),
            planned_steps: self.planned,
        }
    }

    fn elapsed_s(&self) -> f64 {
        self.before_s + self.started.elapsed().as_secs_f64()
    }

    pub(super) fn out_of_time(&self) -> bool {
        self.elapsed_s() >= self.budget_s
    }

    /// Called after optimizer step `step` (1-based) of a run capped at `max_steps`: the step
    /// count planned at this step, if the plan is made now.
    pub(super) fn after_step(&mut self, step: u64, max_steps: u64) -> Option<u64> {
        if self.planned.is_some() {
            return None;
        }
        self.steps += 1;
        if self.steps == SKIP {
            self.window = Some(Instant::now());
        }
        let start = self.window.filter(|_| self.steps == SKIP + TIMED)?;
        let per_step = start.elapsed().as_secs_f64() / TIMED as f64;
        let left = (self.budget_s - self.elapsed_s()).max(0.0);
        let n = plan_steps(step, per_step, left, max_steps);
        self.planned = Some(n);
        Some(n)
    }
}

/// The last step of a run at `step` that takes `per_step_s` a step and has `left_s` seconds:
/// [`SAFETY`] of them filled, at least one more step, never past `max_steps`.
pub(super) fn plan_steps(step: u64, per_step_s: f64, left_s: f64, max_steps: u64) -> u64 {
    let more = if per_step_s > 0.0 {
        (left_s * SAFETY / per_step_s)
            .floor()
            .clamp(1.0, u64::MAX as f64) as u64
    } else {
        u64::MAX
    };
    step.saturating_add(more).min(max_steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_fills_the_minutes_left_and_never_passes_max_steps() {
        // 100 s left at 0.5 s a step: 190 more steps (95 %).
        assert_eq!(plan_steps(22, 0.5, 100.0, 10_000), 212);
        assert_eq!(plan_steps(22, 0.5, 100.0, 100), 100);
        // Out of time: one more step; an instant step: max_steps.
        assert_eq!(plan_steps(22, 0.5, 0.0, 10_000), 23);
        assert_eq!(plan_steps(22, 0.0, 10.0, 500), 500);
    }

    #[test]
    fn a_resumed_budget_keeps_its_plan_and_its_spent_minutes() {
        let b = Budget::new(
            1.0,
            Some(BudgetState {
                elapsed_s: 59.0,
                planned_steps: Some(300),
            }),
        );
        assert_eq!(b.planned(), Some(300));
        assert!(b.state().elapsed_s >= 59.0);
        let spent = Budget::new(
            1.0,
            Some(BudgetState {
                elapsed_s: 60.0,
                planned_steps: None,
            }),
        );
        assert!(spent.out_of_time());
        // A fresh budget plans once, after SKIP + TIMED steps of this invocation.
        let mut fresh = Budget::new(10.0, None);
        let plans: Vec<Option<u64>> = (1..=30).map(|s| fresh.after_step(s, 1_000_000)).collect();
        assert!(plans[..21].iter().all(Option::is_none));
        assert!(plans[21].is_some_and(|n| n > 22), "{plans:?}");
        assert!(plans[22..].iter().all(Option::is_none));
    }
}
