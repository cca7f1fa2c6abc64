#!/usr/bin/env python
"""Look at a dataset before training on it: samples per source, symbols (and those outside the charset, with
examples), label lengths, what DTRB's filter will drop and why; with --images, image sizes and aspect ratios,
undecodable images and exact duplicates (and the same image stored with different labels).

    python scripts/audit_dataset.py --data data_lmdb_release/training --select_data MJ --images --plots
    python scripts/audit_dataset.py --data my_lmdb --character "0123456789abcdef" --batch_max_length 32

--data is an LMDB tree, datasets folders, or a Hub dataset id (streamed). The model flags (--character,
--sensitive, --batch_max_length, or --saved_model for a trained model's) set the filter's rules, as train.py would
apply them; --data_filtering_off shows DTRB's unfiltered mode. Labels are read first and alone; images only with
--images. The report is printed and written to OUTPUT_DIR/audit.json (PNG histograms with --plots).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from text_recognition.audit import audit, write_audit
from text_recognition.cli import add_model_arguments, check_model_flags, model_config_from_args, model_values, run
from text_recognition.config import ModelConfig
from text_recognition.loading import load_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="LMDB tree, datasets folders, or Hub dataset id")
    parser.add_argument("--select_data", default="/", help="the sources to audit (a name prefix; default: all)")
    parser.add_argument("--data_filtering_off", action="store_true", help="DTRB's unfiltered mode")
    parser.add_argument("--images", action="store_true",
                        help="read every image: sizes, undecodable images, duplicates (slower; labels alone are fast)")
    parser.add_argument("--plots", action="store_true", help="write PNG histograms (needs text_recognition[plots])")
    parser.add_argument("--output_dir", default="audit", help="where audit.json (and plots) go (default ./audit)")
    parser.add_argument("--saved_model", help="take the charset and rules from this model (folder, Hub id)")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.plots:
        from text_recognition.plots import require_matplotlib

        require_matplotlib()
    if args.saved_model:
        config = load_model(args.saved_model).config
        check_model_flags(args, config, repr(args.saved_model), evaluation_flags=("sensitive",))
        if args.sensitive != config.sensitive:
            config = ModelConfig.from_dict({**config.to_dict(), "sensitive": args.sensitive})
    else:
        # the stages do not matter to an audit: any model flag given is taken (and checked), the rest default
        config = model_config_from_args(args, require_stages=False) or ModelConfig(**model_values(args))
    report = audit(args.data, config, select_data=args.select_data, data_filtering_off=args.data_filtering_off,
                   images=args.images)  # fmt: skip
    written = write_audit(report, args.output_dir, plots=args.plots)
    print(report.table())
    print(f"\nwritten: {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
