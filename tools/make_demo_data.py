"""Write the seeded synthetic demo datasets (COCO instances, ADE20K semantics, KITTI mono-3D).

Example: python tools/make_demo_data.py --out data/demo --seed 0 --num-train 300 --num-val 50
"""
import argparse
import sys
from collections.abc import Iterable, Sequence

from tqdm import tqdm

from plugin.demo_data.synthetic import TASKS, make_demo_data
from plugin.utils.cli import HelpFormatter, run_tool


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--out', required=True, help='output folder; coco/, ade/ and kitti_mono/ are made in it')
    parser.add_argument('--seed', type=int, default=0, help='same seed, same bytes')
    parser.add_argument('--num-train', type=int, default=300, help='training images per task')
    parser.add_argument('--num-val', type=int, default=50, help='validation images per task')
    parser.add_argument('--image-size', type=int, nargs=2, default=(160, 160), metavar=('H', 'W'),
                        help='image size of the coco and ade data')
    parser.add_argument('--mono3d-image-size', type=int, nargs=2, default=(160, 512), metavar=('H', 'W'),
                        help='image size of the KITTI-style mono-3D data (KITTI is about 1:3.3)')
    parser.add_argument('--tasks', nargs='+', choices=TASKS, default=list(TASKS), help='datasets to write')
    return parser.parse_args(argv)


def tqdm_progress(items: Iterable[int], desc: str) -> Iterable[int]:
    return tqdm(items, desc=desc, unit='img')


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    roots = make_demo_data(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                           image_size=args.image_size, tasks=args.tasks,
                           mono3d_image_size=args.mono3d_image_size, progress=tqdm_progress)
    for task, root in roots.items():
        print(f'{task}: {root}')


if __name__ == '__main__':
    sys.exit(run_tool(main))
