"""load_model("demo" | "demo-draft" | local directory | Hugging Face hub id) -> LoadedModel.

Safe defaults: safetensors only, `trust_remote_code` off unless asked. On a GPU, `device="auto"`
loads with `device_map="auto"` (accelerate) so that a model larger than one GPU is spread over all
of them; the decoding loop is the same either way.
"""

from __future__ import annotations

import platform
import re
import socket
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import torch
from safetensors import SafetensorError

from tokenforge.errors import ModelLoadError

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_MODELS = {
    "demo": "Llama, 8.9M parameters, byte-level BPE (8k) trained on the Python stdlib",
    "demo-draft": "Llama, 1.4M parameters, same tokenizer; the draft for `demo`",
    "demo-coder": "`demo` fine-tuned on the code-task lab's training tasks (`tokenforge "
                  "eval-code`)",
    "demo-dllm": "masked-diffusion Llama (bidirectional), `demo` adapted with the MDLM "
                 "objective; for the diffusion decoders (llada, fast-dllm, ...)",
}
_HUB_ID = re.compile(r"[\w.\-]+(/[\w.\-]+)?")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
HUB_CONNECT_TIMEOUT_S = 2.0


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    # the decoding backends built for this model (decoding.backends.get_backend), kept because
    # building one packs weights; keyed by (kind, role)
    backends: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def context_length(self) -> int | None:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{device}' was asked for but torch sees no CUDA GPU "
                             "(is a CUDA build of torch installed?); use --device cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}': use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _locate(spec: str) -> tuple[str, bool]:
    """Return (path or hub id, is_local)."""
    if spec in DEMO_MODELS:
        path = DEMO_DIR / spec
        if not (path / "config.json").exists():
            raise ModelLoadError(f"the bundled model '{spec}' is missing from {path}: reinstall "
                                 "tokenforge or rebuild it with `tokenforge train-demo`")
        return str(path), True
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelLoadError(f"'{spec}' is not a model directory (no config.json in it)")
        if not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"'{spec}' has no .safetensors weights; tokenforge loads "
                                 "safetensors only (convert .bin weights with safetensors first)")
        return str(path), True
    if spec.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(spec):
        raise ModelLoadError(f"model path '{spec}' does not exist; pass a directory holding "
                             f"config.json and safetensors, a hub id, or one of: "
                             f"{', '.join(DEMO_MODELS)}")
    return spec, False


def load_model(spec: str, device: str = "auto", dtype: str | torch.dtype = "auto",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer. See the module docstring for the defaults."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tokenforge prints its own progress

    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("no model given: pass demo, demo-draft, a directory or a hub id")
    source, local = _locate(spec)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs = {"trust_remote_code": trust_remote_code}
    unreachable = None if local else _hub_unreachable()
    if unreachable:
        kwargs["local_files_only"] = True  # the cache at once, not minutes of retries
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"unknown model '{spec}': {_config_failure(local, unreachable)} "
                             f"({str(err).splitlines()[0]})") from None
    model_kwargs = dict(kwargs, dtype=torch_dtype, use_safetensors=True)
    if device == "cuda" and torch.cuda.device_count() > 1 and _has_accelerate():
        model_kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, **model_kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err) or "model type" in str(err):
            raise ModelLoadError(f"'{spec}' is a {type(config).__name__} model, not a causal "
                                 "language model; tokenforge needs an AutoModelForCausalLM") from None
        raise ModelLoadError(f"could not load '{spec}': {str(err).splitlines()[0]}") from None
    except OSError as err:
        raise ModelLoadError(f"could not load the weights of '{spec}' (tokenforge loads "
                             f"safetensors only): {str(err).splitlines()[0]}") from None
    except SafetensorError as err:
        raise ModelLoadError(f"the weights file of '{spec}' is corrupt or truncated ({err}); "
                             "download or save the model again (an interrupted download or copy "
                             "leaves a cut file)") from None
    if "device_map" not in model_kwargs:
        model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"'{spec}' has no usable tokenizer: {str(err).splitlines()[0]}") from None
    check_vocab(model, tokenizer, spec)
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec)


def _hub_unreachable(timeout: float = HUB_CONNECT_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used now, or None when a TCP connection to it opens within `timeout`
    seconds, name lookup included (or when a proxy is set: the hub client then decides)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if urllib.request.getproxies():
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    address = (endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80))
    failure: list[str | None] = [f"no connection to {constants.ENDPOINT} within {timeout:g}s"]

    def connect() -> None:  # in a thread: a name lookup has no timeout of its own
        try:
            socket.create_connection(address, timeout=timeout).close()
            failure[0] = None
        except OSError as err:
            failure[0] = f"cannot connect to {constants.ENDPOINT}: {err}"

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return failure[0]


def _config_failure(local: bool, unreachable: str | None) -> str:
    if local:
        return "could not read its config"
    if unreachable:
        return (f"the Hugging Face hub is unreachable ({unreachable}) and the model is not in "
                "the local cache; check the id, or download the model where you have network and "
                "pass the local directory")
    return ("could not read its config from the Hugging Face hub; check the id, or download the "
            "model where you have network and pass the local directory")


def check_vocab(model, tokenizer, name: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelLoadError(f"tokenizer/model vocabulary mismatch for '{name}': the tokenizer has "
                             f"{len(tokenizer)} tokens but the model only {rows} embedding rows; "
                             "pair the model with the tokenizer it was trained with")


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True
