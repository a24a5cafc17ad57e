"""Command line for the data tools: ``python -m dynrefer.data <command> ...``

    synthetic OUT_DIR [--seed N] [--train N] [--val N] [--test N]
    vg REGION_DESCRIPTIONS --out FILE [--image-data image_data.json] [--split S --split-file F] [--tags TAGS.txt]
    refcocog REFS.p INSTANCES.json --out FILE [--split S] [--tags TAGS.txt]
    coco INSTANCES.json --out FILE [--include-crowd] [--tags TAGS.txt]
    ovad OVAD.json[.gz] --out FILE
    tags TAGS.txt CAPTION [CAPTION ...]          print tag_set1 / tag_set2 of each caption
    info FILE                                    summary of an official-format annotation file

Converters take ``--image-root`` (stored in the file's ``dataset.image_root``); a ``--out`` ending in ``.gz`` is
gzip-compressed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from .tags import TagExtractor


def _tagger(path: Optional[str]) -> Optional[TagExtractor]:
    if not path:
        return None
    from .readers import load_tag_vocab
    from .tags import TagExtractor

    return TagExtractor(load_tag_vocab(path))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dynrefer.data", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("synthetic", help="write the synthetic benchmark")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=48)
    p.add_argument("--val", type=int, default=12)
    p.add_argument("--test", type=int, default=12)

    def conv(name: str, *pos: str, tags: bool = True) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=f"convert {name} to the official format")
        for a in pos:
            q.add_argument(a)
        q.add_argument("--out", required=True)
        q.add_argument("--image-root", default=None)
        if tags:
            q.add_argument("--tags", default=None, help="tag vocabulary file: fill parser_result from captions")
        return q

    p = conv("vg", "region_descriptions")
    p.add_argument("--image-data", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--split-file", default=None)
    p.add_argument("--max-words", type=int, default=None)
    p.add_argument("--lowercase", action="store_true")
    p = conv("refcocog", "refs", "instances")
    p.add_argument("--split", default=None)
    p = conv("coco", "instances")
    p.add_argument("--include-crowd", action="store_true")
    conv("ovad", "ovad", tags=False)

    p = sub.add_parser("tags", help="extract tags from captions")
    p.add_argument("vocab")
    p.add_argument("captions", nargs="+")
    p = sub.add_parser("info", help="summarise an annotation file")
    p.add_argument("file")

    args = ap.parse_args(argv)
    try:
        return _run(args)
    except (OSError, ValueError) as err:   # AnnotationError, RawFormatError, unreadable files: one line, exit 2
        from .convert import RawFormatError
        from .records import AnnotationError

        if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, IsADirectoryError,
                                                             NotADirectoryError, PermissionError)):
            raise
        if isinstance(err, ValueError) and not isinstance(err, (AnnotationError, RawFormatError)):
            raise
        line = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) and err.filename else str(err)
        print(f"python -m dynrefer.data {args.cmd}: error: {' '.join(line.split())}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from . import convert
    from .readers import load_annotations, write_json

    if args.cmd == "synthetic":
        from .synthetic import generate

        m = generate(args.out_dir, seed=args.seed, splits={"train": args.train, "val": args.val, "test": args.test})
        print(f"wrote {m['regions']} regions to {args.out_dir}")
        return 0
    if args.cmd == "tags":
        ex = _tagger(args.vocab)
        for c in args.captions:
            s1, s2 = ex.extract_names(c)  # type: ignore[union-attr]
            print(f"{c}\n  tag_set1: {', '.join(s1)}\n  tag_set2: {', '.join(s2)}")
        return 0
    if args.cmd == "info":
        a = load_annotations(args.file)
        with_cap = sum(r.caption is not None for r in a)
        with_tags = sum(bool(r.tags) for r in a)
        print(f"{args.file}: {len(a.images)} images, {len(a)} regions ({with_cap} captioned, {with_tags} tagged), "
              f"{len(a.categories)} categories, {len(a.attributes)} attributes, "
              f"tag vocabulary: {len(a.tag_vocab) if a.tag_vocab else 'none'}")
        return 0
    if args.cmd == "vg":
        d = convert.convert_vg(args.region_descriptions, args.image_data, image_root=args.image_root,
                               split=args.split, split_file=args.split_file, tagger=_tagger(args.tags),
                               max_words=args.max_words, lowercase=args.lowercase)
    elif args.cmd == "refcocog":
        d = convert.convert_refcocog(args.refs, args.instances, split=args.split, image_root=args.image_root,
                                     tagger=_tagger(args.tags))
    elif args.cmd == "coco":
        d = convert.convert_coco(args.instances, image_root=args.image_root, include_crowd=args.include_crowd,
                                 tagger=_tagger(args.tags))
    else:
        d = convert.convert_ovad(args.ovad, image_root=args.image_root)
    write_json(args.out, d)
    print(f"wrote {len(d['annotations'])} regions on {len(d['images'])} images to {args.out} "
          f"({d['dataset']['dropped']} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
