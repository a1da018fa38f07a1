"""sb-data: token shards, a text-to-shard writer and a resumable distributed loader.

>>> from sb_data import DistributedTokenLoader
>>> loader = DistributedTokenLoader("data/fineweb_train_*.bin", tokens_per_rank=64 * 1024)
>>> inputs, targets = next(loader)          # int32 / int64, on the loader's device
>>> state = loader.state_dict()             # save with the checkpoint; load_state_dict() resumes
"""

from sb_data._version import __version__
from sb_data.domains import DomainLabelError, ShardDomains, read_side_file, side_file_path
from sb_data.download import DownloadError, DownloadResult, download, download_file
from sb_data.format import (
    MAGIC,
    VERSION_UINT16,
    VERSION_UINT32,
    ShardFormatError,
    ShardHeader,
    read_header,
    read_tokens,
    write_shard,
)
from sb_data.inspection import ShardReport, inspect_shard
from sb_data.loader import DistributedTokenLoader
from sb_data.output_checks import PrepareOptionError
from sb_data.prepare import PrepareSummary, ValidationRule, prepare
from sb_data.shards import LoaderStats, find_shards
from sb_data.sources import DocumentSourceError
from sb_data.tokenizers import (
    ByteTokenizer,
    DocumentEncodingError,
    Tokenizer,
    TokenizerUnavailableError,
    get_tokenizer,
)
from sb_data.validation import BatchDomains, ValidationLoader

__all__ = [
    "MAGIC",
    "VERSION_UINT16",
    "VERSION_UINT32",
    "BatchDomains",
    "ByteTokenizer",
    "DistributedTokenLoader",
    "DocumentEncodingError",
    "DocumentSourceError",
    "DomainLabelError",
    "DownloadError",
    "DownloadResult",
    "LoaderStats",
    "PrepareOptionError",
    "PrepareSummary",
    "ShardDomains",
    "ShardFormatError",
    "ShardHeader",
    "ShardReport",
    "Tokenizer",
    "TokenizerUnavailableError",
    "ValidationLoader",
    "ValidationRule",
    "__version__",
    "download",
    "download_file",
    "find_shards",
    "get_tokenizer",
    "inspect_shard",
    "prepare",
    "read_header",
    "read_side_file",
    "read_tokens",
    "side_file_path",
    "write_shard",
]
