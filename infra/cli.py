"""The `python -m infra` command line: parse, build the stack, plan, print or execute.

Every command that changes AWS prints its plan first and runs it with the same executor, so
what `plan` shows is what `deploy`, `destroy`, `canary`, `promote` and `rollback` do. Failures
end as one line on stderr and a non-zero exit status (1; 2 for usage errors; 130 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from infra.aws import AWS
from infra.aws_base import error_code, error_message
from infra.config import Config, load_config
from infra.destroy import plan_destroy
from infra.exceptions import ConfigError, InfraError
from infra.executor import DryRunExecutor, Executor
from infra.image import DEFAULT_TAG
from infra.inventory import take_inventory
from infra.invoke import format_predictions, invoke_image
from infra.plan import Plan
from infra.planner import plan_deploy, plan_repository
from infra.policies import POLICY_NAMES, stack_policies
from infra.push import PLATFORMS, PushRequest, ecr_region, push_image
from infra.release import plan_canary, plan_promote, plan_rollback, watch_canary
from infra.resources import ALIAS, Stack
from infra.status import status_lines

DEFAULT_CONFIG = "breedserve.toml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra",
        description="Provision breedserve on AWS (S3, ECR, VPC, EFS, Lambda, Function URL, alarms) with boto3. "
                    "Every change is planned first; `plan` shows it without changing anything.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, config_required: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        default = DEFAULT_CONFIG if config_required else None
        sub.add_argument("--config", default=default, metavar="FILE",
                         help="TOML configuration (see infra/config.example.toml; "
                              + (f"default {DEFAULT_CONFIG})" if default else "optional here)"))
        return sub

    for name, text in (("plan", "show what deploy would create, update or leave alone (reads only)"),
                       ("deploy", "create or update everything, then print the Function URL")):
        sub = command(name, text)
        sub.add_argument("--allow-public", action="store_true",
                         help="allow url.auth = \"NONE\" (a public endpoint anyone can call)")
    command("status", "show every resource with its state, the alias routing, concurrency and the URL")
    destroy = command("destroy", "delete what deploy made (found by tags); keeps models and images by default")
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    destroy.add_argument("--delete-data", action="store_true",
                         help="also delete the model bucket (every object version) and the image repository")
    canary = command("canary", "publish a new version and send a share of live's traffic to it")
    canary.add_argument("--weight", type=float, default=0.1, help="share of traffic for the new version (default 0.1)")
    canary.add_argument("--image", metavar="URI", help="image for the new version (default: [image] uri)")
    canary.add_argument("--model-version", metavar="V", help="MODEL_VERSION for the new version (default: [model] version)")
    canary.add_argument("--watch", type=float, metavar="MINUTES",
                        help="then watch the canary alarm for MINUTES and roll back by itself if it fires")
    canary.add_argument("--poll-seconds", type=float, default=30.0, help="alarm polling interval with --watch")
    command("promote", "send all of live's traffic to the canary version")
    command("rollback", "drop the canary, or return live to its previous version")
    invoke = command("invoke", "call the Function URL with an image (SigV4-signed) and print the predictions")
    invoke.add_argument("--image", required=True, type=Path, metavar="PHOTO", help="a JPEG/PNG/WebP photo")
    invoke.add_argument("--top-k", type=int, default=5, help="how many breeds to print (default 5)")
    invoke.add_argument("--url", help="Function URL to call (default: the stack's, looked up)")
    policy = command("policy", "print the minimal IAM policy the deploying user needs (JSON)")
    policy.add_argument("--account", metavar="ID", help="account id (default: the caller's, via STS)")
    policy.add_argument("--which", default="deployer", choices=("deployer", *POLICY_NAMES),
                        help="deployer (default): both deployer documents, by suggested policy name; or one "
                             "document of the stack")
    push = command("push", "build if needed, tag, log in to ECR, push; print the image digest URI",
                   config_required=False)
    push.add_argument("--repository", metavar="URI", help="target repository (default: the stack's ECR repository)")
    push.add_argument("--tag", help="remote tag (default img-<image id>; tags are immutable)")
    push.add_argument("--platform", choices=sorted(PLATFORMS.values()),
                      help="build platform (default: the config's architecture, else the host's)")
    push.add_argument("--image", dest="local_tag", default=DEFAULT_TAG, metavar="TAG",
                      help=f"local image to push; built when missing (default {DEFAULT_TAG})")
    push.add_argument("--build", action="store_true", help="build even if the local image exists")
    push.add_argument("--local", action="store_true", help="build with a local base image (no registry reachable)")
    push.add_argument("--engine", choices=("docker", "podman"), help="default: docker if its daemon answers, else podman")
    push.add_argument("--insecure-registry", action="store_true",
                      help="plain-HTTP registry such as a test registry on 127.0.0.1 (podman --tls-verify=false)")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, out)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except InfraError as exc:
        return _fail(str(exc))
    except NoCredentialsError:
        return _fail("no AWS credentials found: configure a profile (aws configure) or set AWS_ACCESS_KEY_ID")
    except ClientError as exc:
        return _fail(f"{exc.operation_name}: {error_code(exc)}: {error_message(exc)}")
    except BotoCoreError as exc:
        return _fail(str(exc))


def _fail(message: str) -> int:
    """One line on stderr, whatever the message held (AWS errors can carry HTML or newlines)."""
    text = " ".join(message.split())
    print(f"error: {text[:400]}", file=sys.stderr)
    return 1


def _config(args: argparse.Namespace) -> Config:
    if not args.config:
        raise ConfigError("give --config FILE")
    return load_config(args.config)


def _session(args: argparse.Namespace, out: TextIO) -> tuple[Stack, AWS]:
    config = _config(args)
    aws = AWS(config.region, progress=lambda message: print(f"        {message}", file=out, flush=True))
    return Stack(config, aws.account_id()), aws


def _title(stack: Stack, verb: str) -> str:
    return f"{verb} for stack {stack.name} in {stack.region} (account {stack.account}):"


def _run_plan(aws: AWS, plan: Plan, out: TextIO) -> dict[str, Any]:
    return Executor(aws, out).execute(plan, title="Applying:")


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    stack, aws = _session(args, out)
    DryRunExecutor(out).execute(plan_deploy(stack, aws, allow_public=args.allow_public), _title(stack, "Plan"))
    return 0


def cmd_deploy(args: argparse.Namespace, out: TextIO) -> int:
    stack, aws = _session(args, out)
    plan = plan_deploy(stack, aws, allow_public=args.allow_public)
    DryRunExecutor(out).execute(plan, _title(stack, "Plan"))
    if not plan.is_empty:
        _run_plan(aws, plan, out)
    url = aws.function_url(stack.inference_function, ALIAS)
    print(f"Function URL: {url.url if url else '(none)'} (auth {stack.config.url.auth})", file=out)
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    stack, aws = _session(args, out)
    print("\n".join(status_lines(stack, aws)), file=out)
    return 0


def cmd_destroy(args: argparse.Namespace, out: TextIO) -> int:
    stack, aws = _session(args, out)
    plan = plan_destroy(stack, take_inventory(stack, aws), delete_data=args.delete_data)
    DryRunExecutor(out).execute(plan, _title(stack, "Destroy"))
    if plan.is_empty:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise InfraError("destroy needs confirmation: run it in a terminal, or pass --yes")
        answer = input(f"Type the stack name ({stack.name}) to delete these resources: ")
        if answer.strip() != stack.name:
            print("not confirmed: nothing deleted", file=out)
            return 1
    _run_plan(aws, plan, out)
    print(f"stack {stack.name} destroyed", file=out)
    return 0


def cmd_canary(args: argparse.Namespace, out: TextIO) -> int:
    stack, aws = _session(args, out)
    plan = plan_canary(stack, aws, args.weight, image_uri=args.image, model_version=args.model_version)
    DryRunExecutor(out).execute(plan, _title(stack, "Canary"))
    if not plan.is_empty:
        _run_plan(aws, plan, out)
    if args.watch is not None:
        watch_canary(stack, aws, args.watch, poll_seconds=args.poll_seconds,
                     rollback=lambda rollback: _run_plan(aws, rollback, out), out=out)
    return 0


def _release(args: argparse.Namespace, out: TextIO, planner: Callable[[Stack, AWS], Plan], verb: str) -> int:
    stack, aws = _session(args, out)
    plan = planner(stack, aws)
    DryRunExecutor(out).execute(plan, _title(stack, verb))
    _run_plan(aws, plan, out)
    return 0


def cmd_invoke(args: argparse.Namespace, out: TextIO) -> int:
    config = _config(args)
    url = args.url
    if url:
        aws = AWS(config.region)
    else:
        stack, aws = _session(args, out)
        found = aws.function_url(stack.inference_function, ALIAS)
        if found is None:
            raise InfraError(f"{stack.inference_function}:{ALIAS} has no Function URL: run `deploy` first")
        url = found.url
    credentials = aws.session.get_credentials()
    answer = invoke_image(url, args.image, credentials.get_frozen_credentials() if credentials else None,
                          config.region, top_k=args.top_k)
    print(format_predictions(answer), file=out)
    return 0


def cmd_policy(args: argparse.Namespace, out: TextIO) -> int:
    config = _config(args)
    account = args.account or AWS(config.region).account_id()
    if not (account.isdigit() and len(account) == 12):
        raise ConfigError(f"--account {account!r}: expected a 12-digit AWS account id")
    stack = Stack(config, account)
    policies = stack_policies(stack)
    if args.which == "deployer":
        names = [n for n in POLICY_NAMES if n.startswith("deployer-")]
        print(json.dumps({f"{stack.name}-{n}": policies[n] for n in names}, indent=2), file=out)
        print("attach both as managed policies (one is over IAM's size limit); one document each: "
              + ", ".join(f"--which {n}" for n in names), file=sys.stderr)
    else:
        print(json.dumps(policies[args.which], indent=2), file=out)
    return 0


def cmd_push(args: argparse.Namespace, out: TextIO) -> int:
    """Only the digest URI goes to stdout (`URI=$(python -m infra push ...)`); progress to stderr."""
    platform = args.platform
    log = sys.stderr
    aws: AWS | None = None
    if args.config:
        stack, aws = _session(args, log)
        platform = platform or PLATFORMS[stack.config.image.architecture]
        repository = args.repository
        if not repository:
            plan = plan_repository(stack, aws)
            if not plan.is_empty:
                DryRunExecutor(log).execute(plan, _title(stack, "Repository"))
                _run_plan(aws, plan, log)
            state = aws.repository(stack.repository)
            assert state is not None
            repository = state.uri
    elif args.repository:
        repository = args.repository
    else:
        raise ConfigError("give --config FILE (push to the stack's repository) or --repository URI")
    region = ecr_region(repository)
    login = None
    if region is not None:
        registry = aws if aws is not None and aws.region == region else AWS(region)
        login = registry.registry_login
    request = PushRequest(repository=repository, local_tag=args.local_tag, tag=args.tag, platform=platform,
                          build=args.build, local_build=args.local, engine=args.engine,
                          tls_verify=not args.insecure_registry)
    uri = push_image(request, login=login, out=log)
    print(uri, file=out)
    return 0


COMMANDS = {
    "plan": cmd_plan,
    "deploy": cmd_deploy,
    "status": cmd_status,
    "destroy": cmd_destroy,
    "canary": cmd_canary,
    "promote": lambda args, out: _release(args, out, plan_promote, "Promote"),
    "rollback": lambda args, out: _release(args, out, plan_rollback, "Rollback"),
    "invoke": cmd_invoke,
    "policy": cmd_policy,
    "push": cmd_push,
}

