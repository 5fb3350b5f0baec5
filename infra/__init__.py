"""Provision breedserve on AWS with boto3: plan, deploy, release, destroy.

The pipeline, in the order data flows through it:

1. `config` reads the TOML file into a validated `Config`.
2. `resources` derives the desired `Stack`: names, tags, ARNs, function specs, alarms.
3. `planner` / `planner_functions` (deploy), `release` (canary, promote, rollback) and `destroy`
   compare it with what AWS reports, through the read-only half of the façade, and return a
   `plan.Plan`: data, one step per API call, each with a human message.
4. `executor.Executor` runs the plan through the façade; `executor.DryRunExecutor` prints it.
5. `aws` (with `aws_storage`, `aws_network`, `aws_functions`) is the typed façade over boto3:
   intention-revealing methods, waiters after mutations, bounded retries where AWS is only
   eventually consistent.

`policies` builds every IAM document and lints it; `status`, `invoke` and `push` are the
remaining commands; `cli` wires them to `python -m infra`.
"""
