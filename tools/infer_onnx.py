"""Run a folder of images through a whole detector exported by tools/export.py --whole-model; write pictures.

    python tools/infer_onnx.py work_dirs/mask_rcnn_cfg2_672.onnx data/demo/coco/val --out work_dirs/pictures
    python tools/infer_onnx.py FILE.onnx IMAGES_DIR --out DIR --config CONFIG --score-thr 0.5 --threads 2

Every image file of IMAGES_DIR (jpg, jpeg, png, bmp, tif, tiff, webp; not its subfolders) goes through
``plugin.deploy.OnnxDetector``: the test pipeline stored in the file (resize, normalise, pad), ONNX
Runtime on the CPU, boxes rescaled and masks pasted into the original image. mmdet's
``DetLocalVisualizer`` draws the detections scoring at least --score-thr, with the file's class
names and palette, into DIR under the image's name. --config checks first that the file was
exported from that config (its model settings and test resize).
"""
import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from plugin.deploy import OnnxDetector, read_image
from plugin.utils import markdown_table
from plugin.utils.cli import HelpFormatter, run_tool

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('file', help='an .onnx file written by tools/export.py --whole-model')
    parser.add_argument('images', help='a folder of images')
    parser.add_argument('--out', required=True, help='folder for the pictures')
    parser.add_argument('--config', default=None, help='the config the file must have been exported from')
    parser.add_argument('--score-thr', type=float, default=0.3, help='draw detections scoring at least this')
    parser.add_argument('--threads', type=int, default=None, help='ONNX Runtime intra-op threads (default: its own)')
    return parser.parse_args(argv)


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f'no folder {folder}')
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f'{folder} holds no image file ({", ".join(IMAGE_SUFFIXES)})')
    return files


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    files = image_files(Path(args.images))
    detector = OnnxDetector(args.file, config=args.config, threads=args.threads)
    from mmdet.visualization import DetLocalVisualizer
    visualizer = DetLocalVisualizer(name=f'infer_onnx_{id(detector)}')
    palette = detector.settings.palette
    visualizer.dataset_meta = {'classes': detector.classes,
                               'palette': None if palette is None else [tuple(colour) for colour in palette]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in tqdm(files, desc='detecting', unit='image'):
        sample = detector.predict(path)[0]
        visualizer.add_datasample(path.stem, read_image(path)[..., ::-1], sample, draw_gt=False,
                                  pred_score_thr=args.score_thr, out_file=str(out / path.name))
        scores = sample.pred_instances.scores
        rows.append({'image': path.name, 'size': 'x'.join(map(str, sample.ori_shape)), 'detections': len(scores),
                     f'drawn (score >= {args.score_thr:g})': int((scores >= args.score_thr).sum())})
    print(f'# {Path(args.file).name} ({detector.settings.config}, input {detector.input_size[0]}x'
          f'{detector.input_size[1]}) on {len(files)} images of {args.images} -> {out}')
    print(markdown_table(rows))
    return rows


if __name__ == '__main__':
    sys.exit(run_tool(main))
