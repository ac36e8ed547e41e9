//! Backward passes: their plans (`keops_middle::vjp`, re-exported here) and running them on
//! arrays through the driver (`vjp_run`).

pub use crate::vjp_run::{
    check_cotangent, check_output_rows, check_saved_rows, run_many, run_many_ranges,
    run_many_ranges_on, run_many_with, run_plan, run_plan_with_saved, saved_rows, vjp, vjp_many,
    PassRunner, VjpRunError,
};
pub use keops_middle::vjp::*;
