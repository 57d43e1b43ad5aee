"""Command line: ``python -m medclip_core <command> ...``; JSON on stdout.

Bad input exits with status 2 and one line on stderr (``error: ...``); nothing else is printed.
Set ``MEDCLIP_DEBUG=1`` to see the traceback of an unexpected failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from medclip_core.data.findings import DEFAULT_PRESET, LABEL_PRESETS
from medclip_core.errors import MedclipError
from medclip_core.train.runs import METHODS
from medclip_core.train.tasks import TRAINING_TASKS, run_manager_tasks

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


def _answer(result: Any, out: Path | None, **save_options: Any) -> dict[str, Any]:
    """A command's JSON answer: the result's ``to_dict()``, plus the files its ``save()`` wrote with ``--out``."""
    payload = result.to_dict()
    if out is not None:
        payload.update(result.save(out, **save_options))
    return payload


def cmd_models(args: argparse.Namespace) -> Any:
    from medclip_core.models import describe_models

    return describe_models()


def cmd_inspect(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image

    window = tuple(args.window) if args.window else None
    image = load_image(args.image, frame=args.frame, window=window)
    result: dict[str, Any] = {"path": str(args.image), "width": image.size[0], "height": image.size[1],
                              "color": image.is_color, "metadata": image.metadata}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.to_pil().save(args.out)
        result["preview"] = str(args.out)
    return result


def cmd_phantom(args: argparse.Namespace) -> Any:
    from medclip_core.data.phantom import write_examples

    if args.action == "export":
        return _phantom_export(args)
    n = 16 if args.n is None else args.n
    if n < 1:
        raise MedclipError("--n must be at least 1.")
    return write_examples(args.out, n=n, seed=args.seed, size=args.size, split=args.split)


def _phantom_export(args: argparse.Namespace) -> Any:
    """The phantom evaluation samples (as ``eval --data phantom`` measures them) as a labelled set."""
    from medclip_core.eval.phantom_export import export_phantom

    if not args.export_format:
        raise MedclipError("phantom export needs --format chexpert, pairs, boxes or masks.")
    n = 1000 if args.n is None else args.n
    if n < 2:
        raise MedclipError("--n must be at least 2.")
    return export_phantom(args.out, args.export_format, n=n, split=args.split, seed=args.seed)


def cmd_train(args: argparse.Namespace) -> Any:
    """Train (or resume) one task of the table with the flags given over its config's defaults."""
    from dataclasses import asdict

    task = TRAINING_TASKS[args.task]
    given = {name: getattr(args, name) for name in _train_flag_names() if getattr(args, name) is not None}
    foreign = sorted(set(given) - task.field_names())
    if foreign:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in foreign)
        raise MedclipError(f"{flags} do{'es' if len(foreign) == 1 else ''} not apply to --task {args.task}.")
    if args.preset and args.preset not in task.presets:
        raise MedclipError(f"--preset {args.preset} is not a preset of --task {args.task}.")
    values = {**task.presets.get(args.preset, {}), **given}
    run = task.start(task.config(out_dir=str(args.out), **values),
                     log=lambda line: print(line, file=sys.stderr, flush=True))
    result = run.run()
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 answers
        return None
    return {k: v for k, v in asdict(result).items() if k != "metrics"}


def _train_flag_names() -> list[str]:
    """Config fields of every training task (each is a ``train`` flag)."""
    return list(dict.fromkeys(f.name for task in TRAINING_TASKS.values() for f in task.fields()))


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field of the training tasks: type, choices and help from the field; a flag
    several tasks share says each task's default. Defaults stay None, so the task's own apply."""
    import typing

    owners: dict[str, list[tuple[str, Any]]] = {}
    for name, task in TRAINING_TASKS.items():
        for f in task.fields():
            owners.setdefault(f.name, []).append((name, f))
    shared = parser.add_argument_group("flags of several tasks")
    groups = {name: parser.add_argument_group(f"--task {name} only") for name in TRAINING_TASKS}
    for field_name, users in owners.items():
        task_name, f = users[0]
        kind = typing.get_type_hints(TRAINING_TASKS[task_name].config)[field_name]
        kind = next((k for k in typing.get_args(kind) if k is not type(None)), kind)  # X | None -> X
        defaults = "; ".join(f"{task}: {field.default}" for task, field in users)
        group = shared if len(users) > 1 else groups[task_name]
        negate = kind is bool and f.default is True
        text = f"{'turn off: ' if negate else ''}{f.metadata.get('help', '')} (default {defaults})"
        flag = field_name.replace("_", "-")
        if kind is bool:
            group.add_argument(f"--no-{flag}" if negate else f"--{flag}", dest=field_name, default=None,
                               action="store_false" if negate else "store_true", help=text)
        else:
            group.add_argument(f"--{flag}", dest=field_name, type=kind, choices=f.metadata.get("choices"),
                               help=text)


def cmd_runs(args: argparse.Namespace) -> Any:
    """Background runs (the Training tab's manager): list, start, cancel, validate a dataset CSV."""
    from dataclasses import fields

    from medclip_core.train.datasets import validate_pairs_csv
    from medclip_core.train.runs import RunManager, RunRequest

    if args.action != "list" and not args.target:
        raise MedclipError(f"runs {args.action} needs a {'CSV path' if args.action == 'validate' else 'run name'}.")
    if args.action == "validate":
        return validate_pairs_csv(args.target).to_dict()
    manager = RunManager()
    if args.action == "list":
        return [r.to_dict() for r in manager.refresh()]
    if args.action == "cancel":
        return manager.cancel(args.target, wait_s=args.wait).to_dict()
    request = {f.name: getattr(args, f.name) for f in fields(RunRequest) if getattr(args, f.name, None) is not None}
    return manager.submit(RunRequest(name=args.target, **request)).to_dict()


def cmd_eval(args: argparse.Namespace) -> Any:
    from medclip_core.eval.phantom_eval import evaluate_phantom, write_eval
    from medclip_core.models import load_model

    if args.data != "phantom":
        return _eval_labelled_set(args)
    if len(args.model or []) > 1:
        raise MedclipError("--data phantom evaluates one --model at a time; give a labelled set to compare models.")
    args.model = args.model[0] if args.model else None
    if args.task == "report":
        return _eval_report(args)
    model = load_model(args.model, device=args.device)
    progress = lambda fraction, message: print(f"{fraction:.0%} {message}", file=sys.stderr)  # noqa: E731
    if args.task == "grounding":
        from medclip_core.eval.grounding_eval import evaluate_grounding
        from medclip_core.tasks.grounding import METHODS

        methods = args.methods or list(METHODS)
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise MedclipError(f"Unknown heatmap method(s) {unknown}; choose from {', '.join(METHODS)}.")
        result = evaluate_grounding(model, n=args.n, methods=methods, split=args.split, seed=args.seed,
                                    progress=progress)
    else:
        result = evaluate_phantom(model, n=args.n, split=args.split, seed=args.seed, progress=progress,
                                  negatives=args.negatives)
    payload = result.to_dict()
    out = args.out or _eval_path_next_to(args.model, f"eval_{args.task}.json")
    if out is not None:
        write_eval(result, out)
        payload["written_to"] = str(out)
    return payload


def _eval_labelled_set(args: argparse.Namespace) -> Any:
    """Every --model on the user's labelled set (a CSV or a folder holding one) through the engine."""
    from medclip_core.data.labelled_sets import read_labelled_set
    from medclip_core.eval.engine import EvalOptions, evaluate_set
    from medclip_core.models import default_model_name, load_model

    names = list(dict.fromkeys(args.model or [default_model_name()]))
    labelled = read_labelled_set(args.data, uncertain=args.uncertain)
    models = {name: load_model(name, device=args.device) for name in names}
    options = EvalOptions(tasks=tuple(args.tasks) if args.tasks else None, bootstrap=args.bootstrap, seed=args.seed,
                          threshold=args.threshold, methods=tuple(args.methods or ("similarity",)),
                          negatives=args.negatives, relevance=args.relevance, workers=args.workers)
    result = evaluate_set(models, labelled, options,
                          progress=lambda fraction, message: print(f"{fraction:.0%} {message}", file=sys.stderr))
    return _answer(result, args.out)


def _eval_report(args: argparse.Namespace) -> Any:
    from medclip_core.errors import ModelUnavailableError
    from medclip_core.eval.report_eval import evaluate_reports, write_report_eval
    from medclip_core.models import default_model_name, load_model
    from medclip_core.tasks.report import decoder_folder, decoder_for

    name = args.model or default_model_name()
    model = load_model(name, device=args.device)
    try:
        decoder = decoder_for(model, name)
    except ModelUnavailableError as error:  # retrieval and baselines still run
        print(f"note: {error}", file=sys.stderr)
        decoder = None
    result = evaluate_reports(model, decoder, split=args.split, n=args.n, seed=args.seed,
                              progress=lambda fraction, message: print(f"{fraction:.0%} {message}", file=sys.stderr))
    payload = result.to_dict()
    out = args.out
    if out is None and decoder is not None and args.split == "test" and result.complete_split:
        out = decoder_folder(name) / "eval_report.json"  # the whole test split's evaluation goes next to the decoder
    if out is not None:
        write_report_eval(result, out)
        payload["written_to"] = str(out)
    return payload


def cmd_report(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image
    from medclip_core.tasks.report import METHODS, SUPPORT, draft_report

    image = load_image(args.image, frame=args.frame)
    support = SUPPORT if args.support is None else args.support
    if args.method != "both":
        draft = draft_report(image, args.method, args.model, k=args.k, impression_k=args.impression_k,
                             beam=args.beam, support=support)
        return _answer(draft, args.out)
    drafts = {m: draft_report(image, m, args.model, k=args.k, impression_k=args.impression_k, beam=args.beam,
                              support=support) for m in METHODS}
    return {m: _answer(draft, args.out, prefix=f"{m}-") for m, draft in drafts.items()}


def cmd_eval_sanity(args: argparse.Namespace) -> Any:
    from medclip_core.eval.heatmap_sanity import CONTROL_PHRASE, SanityItem, check_heatmaps, phantom_sanity_items
    from medclip_core.io import load_image
    from medclip_core.models import load_model

    if args.n < 1:
        raise MedclipError("--n must be at least 1.")
    if args.images:
        items = [SanityItem(load_image(path), args.phrase) for path in args.images[:args.n]]
    else:
        items = phantom_sanity_items(args.n, args.split, args.seed)
    result = check_heatmaps(load_model(args.model, device=args.device), items, methods=args.methods,
                            control_phrase=args.control or CONTROL_PHRASE, blocks=args.blocks, seed=args.seed,
                            progress=lambda fraction, message: print(f"{fraction:.0%} {message}", file=sys.stderr))
    return _answer(result, args.out)


def add_eval_sanity_command(sub: argparse._SubParsersAction) -> None:
    """``eval-sanity``: the heatmap sanity checks (medclip_core/eval/heatmap_sanity.py)."""
    p = sub.add_parser("eval-sanity", help="heatmap sanity checks: rank correlation of each method's map with a "
                                           "nonsense phrase's map and with a weight-randomised model's map")
    p.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
    p.add_argument("--methods", nargs="+", help="heatmap methods (default: all the model allows)")
    p.add_argument("--n", type=int, default=50, help="images (phantom samples showing a focal finding, or --images)")
    p.add_argument("--images", nargs="+", type=Path, help="your own images instead of the phantom split")
    p.add_argument("--phrase", default="pleural effusion", help="--images: the phrase mapped on every image")
    p.add_argument("--control", help="the nonsense phrase (default: 'a photo of a bicycle wheel')")
    p.add_argument("--blocks", type=int, default=1, help="last image blocks to randomise (>1: cascading)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--seed", type=int, default=0, help="phantom order and the randomisation")
    p.add_argument("--device")
    p.add_argument("--out", type=Path, help="folder to save heatmap_sanity.json in")
    p.set_defaults(func=cmd_eval_sanity)


def _eval_path_next_to(model_name: str | None, file_name: str) -> Path | None:
    """Evaluations are written next to local models (checkpoint folders, the embedded default)."""
    from medclip_core.models import default_model_name, get_spec

    name = model_name or default_model_name()
    if name.startswith("local-dir:"):
        return Path(name[len("local-dir:"):]) / file_name
    try:
        spec = get_spec(name)
    except MedclipError:
        return None
    return spec.local_path / file_name if spec.backend == "checkpoint" else None


def cmd_zero_shot(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image
    from medclip_core.tasks.diagnose import diagnose
    from medclip_core.tasks.zero_shot import resolve_labels

    result = diagnose(load_image(args.image, frame=args.frame), resolve_labels(args.labels, args.preset),
                      mode=args.mode, model=args.model, compare_with=args.compare_with, shots=args.shots,
                      support_csv=args.support_csv, negatives=args.negatives)
    return _answer(result, args.out)


def cmd_heatmap(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image
    from medclip_core.tasks.grounding import ground

    result = ground(load_image(args.image, frame=args.frame), args.phrases, model=args.model,
                    method=args.method)
    return _answer(result, args.out, opacity=args.opacity)


def cmd_segment(args: argparse.Namespace) -> Any:
    from medclip_core.dicom_seg import write_dicom_seg
    from medclip_core.io import load_image
    from medclip_core.tasks.segmentation import segment

    if args.dicom_seg and args.out is None:
        raise MedclipError("--dicom-seg writes a file: give --out FOLDER too.")
    if args.keep_patient and not args.dicom_seg:
        raise MedclipError("--keep-patient applies to the DICOM SEG: give --dicom-seg too.")
    result = segment(load_image(args.image, frame=args.frame), args.phrases, model=args.model,
                     method=args.method)
    payload = _answer(result, args.out)
    if args.dicom_seg:  # de-identified unless --keep-patient
        payload["dicom_seg"] = str(write_dicom_seg(args.image, dict(zip(result.phrases, result.masks)),
                                                   args.out / "segmentation.dcm", deidentify=not args.keep_patient))
    return payload


def _tqdm_progress(description: str):
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    return update


def _gallery_index(args: argparse.Namespace) -> Any:
    from medclip_core.data.galleries import collection_from_spec
    from medclip_core.models import load_model
    from medclip_core.tasks.retrieval import build_index

    collection = collection_from_spec(args.gallery)
    index = build_index(load_model(args.model), collection, progress=_tqdm_progress("embedding gallery"))
    return {**index.to_dict(), "skipped": [s.__dict__ for s in collection.skipped]}


def cmd_retrieve(args: argparse.Namespace) -> Any:
    from medclip_core.data.galleries import collection_from_spec
    from medclip_core.io import load_image
    from medclip_core.models import load_model
    from medclip_core.tasks.retrieval import (
        build_index, image_to_reports, labelled_precision, search_image, search_text,
    )

    if (args.text is None) == (args.image is None):
        raise MedclipError("Give exactly one query: --text TEXT or --image PATH.")
    if args.index:
        return _retrieve_from_archive_index(args)
    model = load_model(args.model)
    if args.reports:
        if args.image is None:
            raise MedclipError("--reports searches the report corpus with an image: give --image PATH.")
        return _answer(image_to_reports(model, load_image(args.image), k=args.k,
                                        progress=_tqdm_progress("embedding reports")), args.out)
    collection = collection_from_spec(args.gallery)
    index = build_index(model, collection, progress=_tqdm_progress("embedding gallery"))
    if args.text is not None:
        result = search_text(model, index, args.text, k=args.k)
    else:
        result = search_image(model, index, load_image(args.image), k=args.k)
    payload = _answer(result, args.out)
    precision = labelled_precision(result, collection)
    if precision is not None:
        payload["precision_at_k"] = precision
    return payload


def add_index_commands(sub: Any) -> None:
    """``index`` (the gallery cache, as before) and ``index build | list | info`` (archive indexes)."""
    p = sub.add_parser("index", help="build (or reuse) the image index of a gallery for a model; "
                                     "`index build` indexes an archive folder or CSV (see docs/scale.md)")
    p.add_argument("--model")
    p.add_argument("--gallery", default="phantom", help="phantom, phantom:N, a folder of images or a CSV")
    p.set_defaults(func=cmd_index)
    actions = p.add_subparsers(dest="index_action")
    build = actions.add_parser("build", help="embed every image of a folder or CSV into a resumable index folder")
    build.add_argument("--source", required=True, help="folder (recursive; PNG/JPEG/TIFF/DICOM) or CSV "
                                                       "(image[,report][,labels])")
    build.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
    build.add_argument("--out", type=Path, required=True, help="the index folder (resumes the job it holds)")
    build.add_argument("--engine", choices=("local", "ray"), default="local")
    build.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: a Ray instance on this machine)")
    build.add_argument("--workers", type=int, default=2, help="local: decode processes; ray: model replicas")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--shard-size", type=int, default=1024, help="images per shard (the most a crash loses)")
    build.add_argument("--exact-max", type=int, help="largest exact index; above it IVF-PQ (default 100000)")
    build.set_defaults(func=cmd_index)
    listing = actions.add_parser("list", help="the indexes registered under MEDCLIP_INDEX_ROOT")
    listing.set_defaults(func=cmd_index)
    info = actions.add_parser("info", help="what an index holds (index.json)")
    info.add_argument("name", help="a name under MEDCLIP_INDEX_ROOT, or an index folder")
    info.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> Any:
    action = getattr(args, "index_action", None)
    if action is None:
        return _gallery_index(args)
    from medclip_core.index import ArchiveIndex, BuildOptions, build_index, registered_indexes, resolve_index

    if action == "list":
        return registered_indexes()
    if action == "info":
        return ArchiveIndex.open(resolve_index(args.name)).info.to_dict()
    options = BuildOptions(engine=args.engine, address=args.address, workers=args.workers,
                           batch_size=args.batch_size, shard_size=args.shard_size,
                           **({"exact_max": args.exact_max} if args.exact_max is not None else {}))
    try:
        info = build_index(args.source, args.model, args.out, options)
    except KeyboardInterrupt:
        raise MedclipError(f"Interrupted; the finished shards are kept in {args.out}. Run the same command "
                           "again to resume.") from None
    return {**info.to_dict(), "path": str(args.out)}


def _retrieve_from_archive_index(args: argparse.Namespace) -> Any:
    from medclip_core.index import ArchiveIndex, resolve_index, search_index_image, search_index_text
    from medclip_core.io import load_image
    from medclip_core.models import load_model

    if args.reports:
        raise MedclipError("--reports searches the report corpus, not an archive index; leave out --index.")
    index = ArchiveIndex.open(resolve_index(args.index))
    model = load_model(args.model or index.info.model)
    if args.text is not None:
        return search_index_text(model, index, args.text, k=args.k).to_dict()
    return search_index_image(model, index, load_image(args.image), k=args.k).to_dict()


def cmd_embed(args: argparse.Namespace) -> Any:
    from medclip_core.data.galleries import collection_from_spec
    from medclip_core.models import load_model
    from medclip_core.tasks.embedding import embedding_map

    result = embedding_map(load_model(args.model), collection_from_spec(args.gallery), method=args.method,
                           color_by=args.color_by, seed=args.seed, progress=_tqdm_progress("embedding"))
    return _answer(result, args.out)


# --- archive (DICOMweb) -------------------------------------------------------------------------


def cmd_archive(args: argparse.Namespace) -> Any:
    """``archive search|list|fetch|zero-shot|push``: the host's DICOMweb archive (docs/archive.md)."""
    from medclip_core.archive.client import ArchiveClient
    from medclip_core.archive.config import ArchiveSettings

    client = ArchiveClient(ArchiveSettings.from_env(), session_id=f"cli-{os.getpid()}")
    if args.archive_command == "search":
        studies = client.search_studies(args.accession, args.date, args.modality, args.study_uid, args.limit)
        return [study.to_dict() for study in studies]
    if args.archive_command == "list":
        if args.series:
            return [i.to_dict() for i in client.list_instances(args.study, args.series)]
        return [s.to_dict() for s in client.list_series(args.study)]
    if args.archive_command == "fetch":
        image, dataset = client.fetch_image(args.study, args.series, args.instance, args.frame)
        result: dict[str, Any] = {"study_uid": args.study, "series_uid": args.series, "sop_uid": args.instance,
                                  "width": image.size[0], "height": image.size[1], "metadata": image.metadata}
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            image.to_pil().save(args.out)
            result["preview"] = str(args.out)
        return result
    from medclip_core.tasks.zero_shot import resolve_labels

    labels = resolve_labels(args.labels, args.preset)
    if args.archive_command == "zero-shot" and not args.instance:
        from medclip_core.archive.jobs import JobSpec, create_job, job_summary, read_rows, run_job

        source = "series" if args.series else "study"
        job = create_job(JobSpec(source, labels, study_uid=args.study, series_uid=args.series, model=args.model,
                                 frame=args.frame, report=args.report, write_sr=args.write_sr,
                                 threshold=args.threshold))
        run_job(job, lambda: client)
        return {**job_summary(job), "folder": str(job), "csv": str(job / "results.csv"),
                "labels": labels, "rows": [row.__dict__ for row in read_rows(job)]}
    from medclip_core.archive.writeback import diagnose_instance, push_findings, push_report, push_segmentation

    if not (args.series and args.instance):
        raise MedclipError("Give STUDY SERIES INSTANCE to score or push one image.")
    result = diagnose_instance(client, args.study, args.series, args.instance, labels, args.model, args.frame)
    payload = result.to_dict()
    if args.archive_command == "push":
        payload["stored"] = {"findings_sr": push_findings(client, result, args.threshold).to_dict()}
        if args.report:
            from medclip_core.tasks.report import draft_report

            draft = draft_report(result.image, model=result.model)
            sections = {"findings": draft.section_text("findings"), "impression": draft.section_text("impression")}
            payload["stored"]["report_sr"] = push_report(client, result.source, sections, result.model,
                                                         result.frame).to_dict()
        if args.seg:
            from medclip_core.tasks.grounding import check_phrases
            from medclip_core.tasks.segmentation import segment

            masks = segment(result.image, check_phrases(args.seg), model=result.model)
            payload["stored"]["seg"] = push_segmentation(
                client, result.source, dict(zip(masks.phrases, masks.masks)), result.model).to_dict()
    return payload


def add_archive_commands(sub: argparse._SubParsersAction) -> None:
    """The ``archive`` command group (the archive is configured by MEDCLIP_DICOMWEB_* variables only)."""
    p = sub.add_parser("archive", help="the host's DICOMweb archive: search, list, fetch, zero-shot, push "
                                       "(MEDCLIP_DICOMWEB_URL; see docs/archive.md)")
    commands = p.add_subparsers(dest="archive_command", required=True)
    q = commands.add_parser("search", help="studies by accession number, study date, modality or study UID")
    q.add_argument("--accession")
    q.add_argument("--date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    q.add_argument("--modality", help="e.g. CR, DX, CT")
    q.add_argument("--study-uid")
    q.add_argument("--limit", type=int)
    q = commands.add_parser("list", help="the series of a study, or the instances of a series (--series)")
    q.add_argument("study")
    q.add_argument("--series")
    q = commands.add_parser("fetch", help="one instance decoded (safe metadata; --out writes a PNG preview)")
    for name in ("study", "series", "instance"):
        q.add_argument(name)
    q.add_argument("--frame", help="middle (default), first, last or a 0-based frame number")
    q.add_argument("--out", type=Path)
    for name, text in (("zero-shot", "zero-shot findings of one instance, or of every image of a series or study "
                                     "(a resumable job; --write-sr stores one SR per study)"),
                       ("push", "diagnose one instance and store its findings SR (--report: a draft report SR, "
                                "--seg PHRASE...: a DICOM SEG); needs MEDCLIP_DICOMWEB_WRITE=1")):
        q = commands.add_parser(name, help=text)
        q.add_argument("study")
        q.add_argument("series", nargs="?")
        q.add_argument("instance", nargs="?")
        q.add_argument("--model")
        q.add_argument("--labels", nargs="+")
        q.add_argument("--preset", choices=("Phantom findings", "CheXpert findings"), default="Phantom findings")
        q.add_argument("--frame", help="middle (default), first, last or a 0-based frame number")
        q.add_argument("--threshold", type=float, default=0.5, help="decision threshold recorded in the SR")
        q.add_argument("--report", action="store_true", help="also draft a report")
        if name == "zero-shot":
            q.add_argument("--write-sr", action="store_true", help="study/series: store one findings SR per study")
        else:
            q.add_argument("--seg", nargs="+", metavar="PHRASE", help="segment these phrases and store a DICOM SEG")
    p.set_defaults(func=cmd_archive)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medclip_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list registry models, whether each loads here, and their cards")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("inspect", help="read an image (PNG/JPEG/TIFF/DICOM): safe metadata and a windowed preview")
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, help="write the windowed preview PNG here")
    p.add_argument("--frame", type=int, help="frame of a multi-frame image (default: the middle one)")
    p.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"), help="override the DICOM window")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("phantom", help="render phantom chest radiographs with their reports, labels and boxes; "
                                       "'phantom export --format F' writes the evaluation split as a labelled set")
    p.add_argument("action", nargs="?", choices=("render", "export"), default="render")
    p.add_argument("--format", dest="export_format", choices=("chexpert", "pairs", "boxes", "masks"),
                   help="export: the labelled-set format (docs/evaluation.md)")
    p.add_argument("--n", type=int, help="render: images (default 16); export: evaluation samples (default 1000)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("zero-shot", help="zero-shot finding probabilities for one image (optionally few-shot adapted)")
    p.add_argument("image", type=Path)
    p.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
    p.add_argument("--labels", nargs="+", help="labels to score (default: the --preset label set)")
    p.add_argument("--preset", choices=tuple(LABEL_PRESETS), default=DEFAULT_PRESET)
    p.add_argument("--mode", choices=("pairwise", "softmax"), default="pairwise")
    p.add_argument("--negatives", choices=("negated", "normal"),
                   help="pairwise negative prompts: 'No {finding}.' (negated) or a normal study's sentences "
                        "(normal); default: the model's own (its card's zero_shot_negatives)")
    p.add_argument("--compare-with", help="a second model scored on the same image and labels")
    p.add_argument("--shots", type=int, default=0, help="phantom examples per label for Tip-Adapter / linear probe")
    p.add_argument("--support-csv", type=Path, help="few-shot support set: CSV with columns image,labels")
    p.add_argument("--frame", type=int)
    p.add_argument("--out", type=Path, help="folder to save the result in (diagnosis.json)")
    p.set_defaults(func=cmd_zero_shot)

    add_index_commands(sub)

    p = sub.add_parser("retrieve", help="text -> images, image -> images, or image -> reports (--reports)")
    p.add_argument("--model")
    p.add_argument("--gallery", default="phantom", help="phantom, phantom:N, a folder of images or a CSV")
    p.add_argument("--text")
    p.add_argument("--image", type=Path)
    p.add_argument("--reports", action="store_true", help="search the Open-i report corpus with --image")
    p.add_argument("--index", help="search an archive index (a name under MEDCLIP_INDEX_ROOT, or its folder) "
                                   "instead of --gallery; see `index build`")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", type=Path, help="folder to save the result in (retrieval.json; gallery or --reports)")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("embed", help="2-D map of a gallery's image and report embeddings, with the modality gap")
    p.add_argument("--model")
    p.add_argument("--gallery", default="phantom:200")
    p.add_argument("--method", choices=("umap", "pca", "tsne"), default="umap")
    p.add_argument("--color-by", choices=("label", "modality"), default="label")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="folder to save the map in (embedding_map.json)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("report", help="draft a report for an image: sentence retrieval or the trained decoder")
    p.add_argument("image", type=Path)
    p.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
    p.add_argument("--method", choices=("retrieval", "generative", "both"), default="retrieval")
    p.add_argument("--k", type=int, default=4, help="retrieval: findings sentences")
    p.add_argument("--impression-k", type=int, default=1, help="retrieval: impression sentences")
    p.add_argument("--support", type=float,
                   help="retrieval: calibrated zero-shot probability a stated abnormal finding needs "
                        "(default 0.1, best on the validation split; 0: no check)")
    p.add_argument("--beam", type=int, default=3, help="generative: beam width")
    p.add_argument("--frame", type=int)
    p.add_argument("--out", type=Path, help="folder to save the draft in (report.json; both: METHOD-report.json)")
    p.set_defaults(func=cmd_report)

    for name, func, default_method, methods_help in (
            ("heatmap", cmd_heatmap, "similarity", "similarity, surgery, gradcam, gscorecam, relevance"),
            ("segment", cmd_segment, "zero-shot:similarity", "zero-shot:<heatmap method> or trained")):
        p = sub.add_parser(name, help=f"one {name.replace('segment', 'mask')} per phrase for an image")
        p.add_argument("image", type=Path)
        p.add_argument("phrases", nargs="+", help="one or more phrases, e.g. 'left pleural effusion'")
        p.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
        p.add_argument("--method", default=default_method, help=methods_help)
        p.add_argument("--frame", type=int)
        p.add_argument("--out", type=Path, help="folder for the JSON, PNG and .npy outputs")
        p.set_defaults(func=func)
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM SEG (DICOM input only), a de-identified copy for sharing")
    p.add_argument("--keep-patient", action="store_true",
                   help="with --dicom-seg: keep the source's patient module and UIDs (return to the same archive)")
    p_heatmap = sub.choices["heatmap"]
    p_heatmap.add_argument("--opacity", type=float, default=0.5, help="overlay opacity of overlay-N.png")

    p = sub.add_parser("train", help="training runs (resume when --out holds a run); flags by task below")
    p.add_argument("--task", choices=tuple(TRAINING_TASKS), default="contrastive",
                   help="; ".join(f"{name}: {task.description}" for name, task in TRAINING_TASKS.items()))
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics.jsonl, config")
    presets = {name: (task_name, values) for task_name, task in TRAINING_TASKS.items()
               for name, values in task.presets.items()}
    p.add_argument("--preset", choices=tuple(presets),
                   help="; ".join(f"{name}: --task {task} with {values}" for name, (task, values) in presets.items()))
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", help="background training runs: list, start NAME, cancel NAME, validate CSV")
    p.add_argument("action", choices=("list", "start", "cancel", "validate"))
    p.add_argument("target", nargs="?", help="run name (start, cancel) or dataset CSV (validate)")
    p.add_argument("--base-model", dest="base_model", help="checkpoint model or architecture (default medclip-phantom)")
    p.add_argument("--data", help="phantom, phantom:N or a CSV path")
    p.add_argument("--task", choices=tuple(run_manager_tasks()))
    p.add_argument("--method", choices=tuple(METHODS))
    for name, kind in (("epochs", float), ("max-steps", int), ("batch-size", int), ("lr", float), ("seed", int),
                       ("nproc", int), ("checkpoint-every", int)):
        p.add_argument(f"--{name}", dest=name.replace("-", "_"), type=kind)
    p.add_argument("--device")
    p.add_argument("--wait", type=float, default=10.0, help="cancel: seconds to wait for the process to end")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("eval", help="phantom test split: zero-shot AUC, retrieval, pointing (--task phantom); "
                                    "heatmap methods and zero-shot masks (--task grounding); report drafts "
                                    "against baselines (--task report)")
    p.add_argument("--task", choices=("phantom", "grounding", "report"), default="phantom")
    p.add_argument("--methods", nargs="+", help="heatmap methods for --task grounding (default: all)")
    p.add_argument("--negatives", choices=("negated", "normal"),
                   help="--task phantom: pairwise negative prompts (default: the model's own)")
    p.add_argument("--model", action="append",
                   help="registry name or local-dir:PATH (default: the default model); repeat to compare models "
                        "on a labelled set")
    p.add_argument("--data", default="phantom", help="phantom, or a labelled set: a CSV or a folder holding one "
                                                     "(formats in docs/evaluation.md)")
    p.add_argument("--tasks", nargs="+", choices=("classification", "retrieval", "grounding", "segmentation"),
                   help="labelled set: the evaluations to run (default: all the set allows)")
    p.add_argument("--uncertain", choices=("positive", "negative", "ignore"), default="ignore",
                   help="labelled set: CheXpert -1 labels counted as positive, negative or left out")
    p.add_argument("--bootstrap", type=int, default=1000, help="labelled set: bootstrap resamples (0: no intervals)")
    p.add_argument("--threshold", type=float, help="labelled set: probability threshold for sensitivity/"
                                                   "specificity (default: Youden's per finding)")
    p.add_argument("--relevance", choices=("report", "labels"), default="report",
                   help="labelled set retrieval: a hit is the own report text, or any report of the same label set")
    p.add_argument("--workers", type=int, help="labelled set: image decoding processes (default: the cores "
                                                "torch's threads leave free)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--out", type=Path, help="phantom: where to write the JSON (default: next to a local model); "
                                            "labelled set: folder for evaluation.json, .csv and .html")
    p.set_defaults(func=cmd_eval)
    add_eval_sanity_command(sub)
    add_archive_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except MedclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # last resort: one line, not a traceback, unless debugging
        if os.environ.get("MEDCLIP_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set MEDCLIP_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_INTERNAL
    if result is not None:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
