# The config, loaded once into `MATRIX` (ifss/workflow/: include files, schema, checks, run
# settings, paths, targets; torch-free and unit-tested), and the input functions the rules name:
# one line each, from the wildcards to MATRIX. An IfssError becomes one WorkflowError sentence.

import functools
import os
import shutil
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version

min_version("8.0")

# The checkout's package comes first, and jobs find the `ifss` command of the Python that runs
# Snakemake even when its venv is not activated (a conda env, when used, is put in front of it).
sys.path.insert(0, workflow.basedir)
os.environ.update(
    PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
)
os.environ.setdefault("IFSS_ROOT", workflow.basedir)  # envs/ifss.yaml installs the checkout from it

from ifss.errors import IfssError
from ifss.workflow import paths
from ifss.workflow.matrix import Matrix


def ifss_errors(func, prefix=""):
    """`func` raising Snakemake's WorkflowError for an IfssError: one sentence, no traceback
    of ifss (a decorator of input functions; the config load adds "Invalid config: ")."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except IfssError as err:
            raise WorkflowError(f"{prefix}{err}") from None

    return wrapper


MATRIX = ifss_errors(Matrix.load, prefix="Invalid config: ")(
    config, workflow.basedir, f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
)

if MATRIX.unregistered():
    logger.warning(
        f"ifss: methods not registered yet, left out of the tables until they are: "
        f"{', '.join(MATRIX.unregistered())}"
    )

# Output patterns of the rules (ifss/workflow/paths.py is the one definition of the layout).
STEP0_DIR = paths.step0_dir("{dataset}", "{task}", "{base}")
STEP_DIR = paths.step_dir("{dataset}", "{task}", "{method}", "{nshot}", "{ishot}", "{step}")
CONTINUAL_STEP0_DIR = paths.continual_step0_dir("{dataset}", "{task}", "{protocol}", "{base}")
CONTINUAL_STEP_DIR = paths.continual_step_dir(
    "{dataset}", "{task}", "{protocol}", "{method}", "{step}"
)
WEAKSHOT_DIR = paths.weakshot_dir("{dataset}", "{task}", "{method}", "{step}")
PSEUDO_DIR = paths.pseudo_dir("{dataset}", "{task}", "{method}")
EPISODIC_DIR = paths.episodic_dir("{dataset}", "{task}", "{backbone}", "{nshot}", "{head}")
TABLE_FILES = paths.table_files("{table}")
FIGURE_FILES = paths.figure_files("{figure}")
PER_STEP_FILES = paths.figure_files("{figure}", "per_step")


# ----------------------------------------------------------------- data and weights rules


def marker_dir(wildcards, output):
    return os.path.dirname(output.marker)


def download_root(wildcards, output):
    """`ifss download NAME --root R` prepares R/NAME, the dataset folder of the marker."""
    return os.path.dirname(os.path.dirname(output.marker))


@ifss_errors
def class_index_inputs(wildcards):
    return MATRIX.class_index_inputs(wildcards.dataset)


def dataset_root(wildcards):
    return MATRIX.datasets[wildcards.dataset]["root"]


def weights_dest(wildcards, output):
    return os.path.dirname(output.file)


def weights_mirror(wildcards):
    return MATRIX.weights_args()


# ----------------------------------------------------------------- training rules


def maybe_temp(path):
    return path if MATRIX.config["keep_fewshot_models"] else temp(path)


def training_threads(stage):
    return lambda wildcards: MATRIX.threads(wildcards.dataset, stage)


@ifss_errors
def step0_inputs(w):
    inputs = MATRIX.step0_inputs(w.dataset, w.task, w.base)
    if "weights" in inputs:
        inputs["weights"] = ancient(inputs["weights"])  # a re-fetched copy reruns nothing
    return inputs


@ifss_errors
def step0_sets(w):
    return MATRIX.step0_sets(w.dataset, w.task, w.base)


@ifss_errors
def continual_step0_inputs(w):
    inputs = MATRIX.step0_inputs(w.dataset, w.task, w.base, w.protocol)
    if "weights" in inputs:
        inputs["weights"] = ancient(inputs["weights"])
    return inputs


@ifss_errors
def continual_step0_sets(w):
    return MATRIX.step0_sets(w.dataset, w.task, w.base, w.protocol)


@ifss_errors
def continual_step_inputs(w):
    return MATRIX.continual_step_inputs(w.dataset, w.task, w.protocol, w.method, w.step)


@ifss_errors
def continual_step_sets(w):
    return MATRIX.continual_step_sets(w.dataset, w.task, w.protocol, w.method, w.step)


@ifss_errors
def step_inputs(w):
    return MATRIX.step_inputs(w.dataset, w.task, w.method, w.nshot, w.ishot, w.step)


@ifss_errors
def step_sets(w):
    return MATRIX.step_sets(w.dataset, w.task, w.method, w.nshot, w.ishot, w.step)


@ifss_errors
def weakshot_inputs(w):
    inputs = MATRIX.weakshot_inputs(w.dataset, w.task, w.method, w.step)
    if "weights" in inputs:
        inputs["weights"] = ancient(inputs["weights"])
    return inputs


@ifss_errors
def weakshot_sets(w):
    return MATRIX.weakshot_sets(w.dataset, w.task, w.method, w.step)


@ifss_errors
def pseudo_inputs(w):
    return MATRIX.pseudo_inputs(w.dataset, w.task, w.method)


@ifss_errors
def pseudo_sets(w):
    return MATRIX.pseudo_sets(w.dataset, w.task, w.method)


@ifss_errors
def episodic_inputs(w):
    return MATRIX.episodic_inputs(w.dataset, w.task, w.backbone, w.nshot, w.head)


@ifss_errors
def episodic_sets(w):
    return MATRIX.episodic_sets(w.dataset, w.task, w.backbone, w.nshot, w.head)


# ----------------------------------------------------------------- tables and figures rules


@ifss_errors
def table_inputs(wildcards):
    return MATRIX.table_metrics(wildcards.table)


@ifss_errors
def table_spec(wildcards):
    return MATRIX.table_spec(wildcards.table)


@ifss_errors
def figure_inputs(wildcards):
    return MATRIX.figure_inputs(wildcards.figure)


@ifss_errors
def figure_model_source(wildcards):
    return MATRIX.figure_model_source(wildcards.figure, wildcards.method)


@ifss_errors
def figure_params(wildcards):
    return MATRIX.figure_params(wildcards.figure)


@ifss_errors
def per_step_inputs(wildcards):
    return MATRIX.per_step_inputs(wildcards.figure)


@ifss_errors
def per_step_spec(wildcards):
    return MATRIX.per_step_spec(wildcards.figure)


# ----------------------------------------------------------------- bench rule


def bench_quick_flag(wildcards):
    return "--quick" if MATRIX.config["bench_quick"] else ""


def bench_gpus(wildcards):
    return int(wildcards.device == "cuda")


# ----------------------------------------------------------------- the fork server


FORK_SERVER = {}  # "process": the ServerProcess of this invocation, while it runs


def start_fork_server():
    """Local runs: jobs' `ifss train | eval | pseudo-labels` are forked from one warm process
    (config fork_server, ifss/fork_server.py). Not for remote executors (SLURM: the socket is on
    this machine) nor conda environments (another interpreter: it would refuse every job)."""
    from snakemake_interface_executor_plugins.settings import DeploymentMethod, ExecMode

    from ifss import fork_server

    ifss = shutil.which("ifss")
    if (
        MATRIX.config["fork_server"]
        and workflow.local_exec
        and workflow.exec_mode == ExecMode.DEFAULT
        and DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method
        and fork_server.available()
        and ifss
    ):
        try:
            FORK_SERVER["process"] = fork_server.ServerProcess([ifss], "logs/fork-server.log")
        except RuntimeError as err:  # only slower without it
            logger.warning(f"ifss: {err}; every job imports torch itself")


def stop_fork_server():
    server = FORK_SERVER.pop("process", None)
    if server:
        server.stop()
