//! `train.max_minutes` as a schedule, not a cut: the run times its first steps, turns the
//! minutes left into a step count and ends its LR schedule there, so "train for 15 minutes"
//! gives an annealed model. The first steps are a poor sample of a run's pace (allocations,
//! a loader filling up, a neighbour on the machine), so the plan is made again from the pace
//! since the last plan at fixed fractions of it ([`REPLAN_AT`]); the last re-plan, at 90 %, leaves
//! little time to miss. The plan, the re-plans done and the minutes used so far go into every
//! checkpoint: a resumed run keeps them and spends only the minutes that are left (resumed
//! after the last re-plan, its steps are those of an uninterrupted run, bit for bit). The
//! budget still stops a run that reaches it before its plan, as Ctrl-C does.

use std::time::Instant;

/// Steps of an invocation left untimed (first allocations, the loader filling up).
const SKIP: u64 = 2;
/// Steps timed for the plan.
const TIMED: u64 = 20;
/// The share of the minutes left that the plan fills; the rest covers checkpoints, grids and
/// evaluations, which the timed steps need not include.
const SAFETY: f64 = 0.95;
/// Fractions of the plan at which it is made again from the pace since the last plan.
pub(super) const REPLAN_AT: [f64; 4] = [0.25, 0.5, 0.75, 0.9];

/// What a checkpoint records of the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BudgetState {
    /// Seconds of training loop spent by this and earlier invocations.
    pub(super) elapsed_s: f64,
    /// The step the schedule ends at, once planned.
    pub(super) planned_steps: Option<u64>,
    /// How many of [`REPLAN_AT`] are behind the run.
    pub(super) replans: u32,
}

/// The wall-clock budget of one invocation of a run.
#[derive(Debug)]
pub(super) struct Budget {
    budget_s: f64,
    before_s: f64,
    started: Instant,
    /// This invocation's steps so far, and when the timed window began (at which of them).
    steps: u64,
    window: Option<(Instant, u64)>,
    planned: Option<u64>,
    replans: u32,
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
            replans: resumed.map_or(0, |r| r.replans),
        }
    }

    pub(super) fn planned(&self) -> Option<u64> {
        self.planned
    }

    pub(super) fn state(&self) -> BudgetState {
        BudgetState {
            elapsed_s: self.elapsed_s(),
            planned_steps: self.planned,
            replans: self.replans,
        }
    }

    fn elapsed_s(&self) -> f64 {
        self.before_s + self.started.elapsed().as_secs_f64()
    }

    pub(super) fn out_of_time(&self) -> bool {
        self.elapsed_s() >= self.budget_s
    }

    /// Called after optimizer step `step` (1-based) of a run capped at `max_steps`: the new
    /// planned step count when the plan is made or changed now.
    pub(super) fn after_step(&mut self, step: u64, max_steps: u64) -> Option<u64> {
        self.steps += 1;
        if self.steps == SKIP {
            self.window = Some((Instant::now(), SKIP));
        }
        // The pace since the last plan (or since this invocation's first steps), once enough
        // steps are timed: it follows a machine that slows down or speeds up.
        let (since, from) = self.window?;
        let timed = self.steps - from;
        if timed < TIMED {
            return None;
        }
        let per_step = since.elapsed().as_secs_f64() / timed as f64;
        let due = match self.planned {
            None => true,
            Some(p) => self.pass_fractions(step, p) > 0,
        };
        if !due {
            return None;
        }
        let left = (self.budget_s - self.elapsed_s()).max(0.0);
        let n = plan_steps(step, per_step, left, max_steps);
        let changed = self.planned != Some(n);
        self.planned = Some(n);
        self.window = Some((Instant::now(), self.steps));
        // A new plan may already be past the next fractions: they are spent with it.
        self.pass_fractions(step, n);
        changed.then_some(n)
    }

    /// Counts the re-plan fractions of `plan` that `step` has reached and are not yet done as
    /// done; how many.
    fn pass_fractions(&mut self, step: u64, plan: u64) -> u32 {
        let passed = REPLAN_AT[self.replans as usize..]
            .iter()
            .take_while(|&&f| step as f64 >= f * plan as f64)
            .count() as u32;
        self.replans += passed;
        passed
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
                replans: 1,
            }),
        );
        assert_eq!(b.planned(), Some(300));
        assert!(b.state().elapsed_s >= 59.0);
        let spent = Budget::new(
            1.0,
            Some(BudgetState {
                elapsed_s: 60.0,
                planned_steps: None,
                replans: 0,
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

    /// A run that slows down after its first plan: the re-plans pull the plan in, so it ends
    /// at its plan inside the budget instead of being cut with the LR still high.
    #[test]
    fn re_plans_follow_a_slower_pace_and_end_inside_the_budget() {
        let mut b = Budget::new(0.03, None); // 1.8 s
        let mut plans = Vec::new();
        let mut step = 0;
        let mut end = u64::MAX;
        while step < end && !b.out_of_time() {
            step += 1;
            let ms = if step <= 30 { 2 } else { 6 };
            std::thread::sleep(std::time::Duration::from_millis(ms));
            if let Some(n) = b.after_step(step, 1_000_000) {
                plans.push((step, n));
                end = n;
            }
        }
        let (first_at, first) = plans[0];
        assert_eq!(first_at, SKIP + TIMED, "{plans:?}");
        assert!(
            plans.len() >= 2,
            "the slower pace changes the plan: {plans:?}"
        );
        assert!(end < first, "{plans:?}");
        assert_eq!(b.state().replans, REPLAN_AT.len() as u32, "{plans:?}");
        // It ends at its plan, or a step or two short where a busy machine stretched the last
        // tenth: the LR is annealed either way.
        assert!(step + 2 >= end, "step {step}: {plans:?}");
    }
}
