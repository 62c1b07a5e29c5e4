"""Synthetic LiDAR street scenes written in the SemanticKITTI layout: the embedded default data.

A procedural street (road, parking bays, raised sidewalks, terrain, buildings, fences, parked and
moving cars and trucks, persons, bicyclists, poles, traffic signs, trees) is scanned by a simulated
64-beam spinning LiDAR (elevations -25..+3 deg, 2000 azimuth steps, 1.73 m above the road, 80 m
range) with range noise, dropout and per-material remission. Labels carry SemanticKITTI raw ids
(moving-* for moving things) and instance ids for things. The sensor advances 1 m per scan along
the street and moving objects advance with their speed, so ``poses.txt`` and ``times.txt`` are
consistent. Everything is deterministic per seed.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from .raycast import cast_boxes, cast_cylinders, cast_ellipsoids, cast_ground

SENSOR_HEIGHT = 1.73
MAX_RANGE = 80.0
# raw id -> (mean remission, spread)
REMISSION = {40: (0.22, 0.05), 44: (0.25, 0.05), 48: (0.30, 0.06), 49: (0.28, 0.06), 50: (0.35, 0.1),
             51: (0.30, 0.1), 70: (0.45, 0.12), 71: (0.35, 0.08), 72: (0.40, 0.1), 80: (0.40, 0.1),
             81: (0.85, 0.1), 10: (0.30, 0.2), 252: (0.30, 0.2), 18: (0.30, 0.15), 258: (0.30, 0.15),
             30: (0.25, 0.08), 254: (0.25, 0.08), 31: (0.30, 0.1), 253: (0.30, 0.1)}

REMISSION_LUT = np.tile([0.3, 0.1], (260, 1))
for _raw, _value in REMISSION.items():
    REMISSION_LUT[_raw] = _value

# Velodyne -> camera 0 (x_cam = -y, y_cam = -z, z_cam = x), as in KITTI's Tr up to small angles.
TR = np.array([[0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1]], dtype=np.float64)
P0 = "7.188560e+02 0 6.071928e+02 0 0 7.188560e+02 1.852157e+02 0 0 0 1 0"


@dataclass(frozen=True)
class LidarConfig:
    beams: int = 64
    azimuth_steps: int = 2000
    elevation_deg: Tuple[float, float] = (-25.0, 3.0)
    range_noise: float = 0.02
    dropout: float = 0.06


@dataclass
class Scene:
    """Primitives of one street, in world coordinates; each carries a raw label and instance id."""

    box_lo: np.ndarray                     # [B, 3]
    box_hi: np.ndarray                     # [B, 3]
    box_label: np.ndarray                  # [B]
    box_instance: np.ndarray               # [B]
    box_velocity: np.ndarray               # [B] m per scan along x
    cyl_centre: np.ndarray                 # [C, 2]
    cyl_radius: np.ndarray                 # [C]
    cyl_z: np.ndarray                      # [C, 2]
    cyl_label: np.ndarray                  # [C]
    cyl_instance: np.ndarray               # [C]
    cyl_velocity: np.ndarray               # [C]
    ell_centre: np.ndarray                 # [E, 3]
    ell_radii: np.ndarray                  # [E, 3]
    road_half_width: float
    sidewalk_width: float
    parking: np.ndarray                    # [P, 3]: x0, x1, side (+1 / -1)
    other_ground: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [G, 2] x ranges


class _Builder:
    """Collects primitives while a street is laid out."""

    def __init__(self):
        self.boxes: List[Tuple] = []
        self.cylinders: List[Tuple] = []
        self.ellipsoids: List[Tuple] = []
        self.next_instance = 1

    def instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def box(self, lo, hi, label, instance=0, velocity=0.0):
        self.boxes.append((lo, hi, label, instance, velocity))

    def cylinder(self, x, y, radius, z0, z1, label, instance=0, velocity=0.0):
        self.cylinders.append(((x, y), radius, (z0, z1), label, instance, velocity))


def make_scene(rng: np.random.Generator, length: float = 260.0) -> Scene:
    """A random street along x from -length/2 to length/2."""
    b = _Builder()
    road = rng.uniform(3.0, 5.0)          # half width
    walk = rng.uniform(2.0, 4.0)          # sidewalk width
    half = length / 2
    for side in (-1, 1):
        y0, y1 = sorted((side * road, side * (road + walk)))
        b.box((-half, y0, -0.2), (half, y1, 0.15), 48)
        # Buildings with gaps, behind a terrain strip of random depth.
        setback = road + walk + rng.uniform(0.5, 3.0)
        x = -half
        while x < half:
            width = rng.uniform(8, 30)
            if rng.random() < 0.9:
                depth, height = rng.uniform(8, 16), rng.uniform(4, 20)
                ya, yb = sorted((side * setback, side * (setback + depth)))
                b.box((x, ya, -0.2), (x + width, yb, height), 50)
            elif rng.random() < 0.7:
                yf = side * (setback - 0.3)
                b.box((x, min(yf, yf + side * 0.1), 0.0), (x + width, max(yf, yf + side * 0.1), rng.uniform(1, 2)), 51)
            x += width + rng.uniform(0.5, 6)
        # Fences along the back of the sidewalk, in segments.
        x = -half
        while x < half:
            run = rng.uniform(5, 30)
            if rng.random() < 0.55:
                yf = side * (road + walk + 0.15)
                b.box((x, min(yf, yf + side * 0.08), 0.0),
                      (x + run, max(yf, yf + side * 0.08), rng.uniform(1.0, 2.2)), 51)
            x += run + rng.uniform(1, 10)
        # Trees and bushes on the terrain strip, poles and signs at the kerb, pedestrians on the walk.
        for xt in rng.uniform(-half, half, int(rng.integers(15, 35))):
            yt = side * (road + walk + rng.uniform(0.5, 1.0))
            trunk_h = rng.uniform(1.5, 3.0)
            b.cylinder(xt, yt, rng.uniform(0.12, 0.3), 0.0, trunk_h, 71)
            r = rng.uniform(1.2, 3.0)
            b.ellipsoids.append(((xt, yt, trunk_h + r * 0.7), (r, r, r * rng.uniform(0.6, 1.0))))
        for xb in rng.uniform(-half, half, int(rng.integers(10, 30))):
            r = rng.uniform(0.6, 1.8)
            b.ellipsoids.append(((xb, side * (road + walk + rng.uniform(0.8, 2.5)), r * 0.5), (r, r, r * 0.6)))
        for xp in rng.uniform(-half, half, int(rng.integers(4, 10))):
            yp = side * (road + 0.4)
            top = rng.uniform(4, 8)
            b.cylinder(xp, yp, rng.uniform(0.06, 0.14), 0.0, top, 80)
            if rng.random() < 0.5:
                b.box((xp - 0.05, yp - 0.4, top - 1.0), (xp + 0.05, yp + 0.4, top - 0.2), 81)
        for xw in rng.uniform(-half, half, int(rng.integers(2, 10))):
            moving = rng.random() < 0.6
            speed = rng.uniform(-0.15, 0.15) if moving else 0.0
            yw = side * (road + rng.uniform(0.5, walk - 0.5))
            if rng.random() < 0.75:
                b.cylinder(xw, yw, rng.uniform(0.2, 0.3), 0.0, rng.uniform(1.5, 1.9),
                           254 if moving else 30, b.instance(), speed)
            else:
                b.box((xw - 0.85, yw - 0.3, 0.0), (xw + 0.85, yw + 0.3, 1.75),
                      253 if moving else 31, b.instance(), 2 * speed)
    # Parking bays with parked cars, and traffic in both lanes.
    parking = []
    for x0 in rng.uniform(-half, half - 20, int(rng.integers(3, 8))):
        side = rng.choice((-1, 1))
        x1 = x0 + rng.uniform(10, 25)
        parking.append((x0, x1, side))
        x = x0 + 0.5
        while x + 4.5 < x1:
            if rng.random() < 0.8:
                y = side * (road - 1.2)
                b.box((x, y - 0.9, 0.15), (x + 4.3, y + 0.9, rng.uniform(1.4, 1.7)), 10, b.instance())
            x += 5.5
    # The ego car drives in the lane y < 0 (see ego_origin); traffic uses the other lane.
    x = -half + rng.uniform(0, 15)
    while x < half:
        moving = rng.random() < 0.6
        speed = -rng.uniform(0.5, 1.5) if moving else 0.0
        y = road * 0.5
        if rng.random() < 0.85:
            length_ = rng.uniform(3.8, 4.8)
            b.box((x, y - 0.9, 0.15), (x + length_, y + 0.9, rng.uniform(1.4, 1.8)),
                  252 if moving else 10, b.instance(), speed)
        else:
            length_ = rng.uniform(7, 11)
            b.box((x, y - 1.25, 0.3), (x + length_, y + 1.25, rng.uniform(2.8, 3.8)),
                  258 if moving else 18, b.instance(), speed)
        x += length_ + rng.uniform(10, 50)
    other_ground = np.array([(x0, x0 + rng.uniform(5, 15)) for x0 in rng.uniform(-half, half, 3)])
    return _finish(b, road, walk, np.array(parking).reshape(-1, 3), other_ground)


def _finish(b: _Builder, road: float, walk: float, parking: np.ndarray, other_ground: np.ndarray) -> Scene:
    boxes = list(zip(*b.boxes))
    cyl = list(zip(*b.cylinders)) if b.cylinders else [[]] * 6
    ell = list(zip(*b.ellipsoids)) if b.ellipsoids else [[], []]
    return Scene(
        box_lo=np.array(boxes[0], dtype=np.float64), box_hi=np.array(boxes[1], dtype=np.float64),
        box_label=np.array(boxes[2]), box_instance=np.array(boxes[3]), box_velocity=np.array(boxes[4]),
        cyl_centre=np.array(cyl[0], dtype=np.float64).reshape(-1, 2), cyl_radius=np.array(cyl[1]),
        cyl_z=np.array(cyl[2], dtype=np.float64).reshape(-1, 2), cyl_label=np.array(cyl[3]),
        cyl_instance=np.array(cyl[4]), cyl_velocity=np.array(cyl[5]),
        ell_centre=np.array(ell[0], dtype=np.float64).reshape(-1, 3),
        ell_radii=np.array(ell[1], dtype=np.float64).reshape(-1, 3),
        road_half_width=road, sidewalk_width=walk, parking=parking, other_ground=other_ground)


def ego_origin(scene: Scene, frame: int) -> np.ndarray:
    """Sensor position of a scan: 1 m further along the ego lane per scan."""
    return np.array([float(frame), -0.5 * scene.road_half_width, SENSOR_HEIGHT])


def ray_directions(config: LidarConfig, rng: np.random.Generator) -> np.ndarray:
    """Unit directions [beams * azimuth_steps, 3], beam-major like a ring-ordered scan."""
    elevation = np.deg2rad(np.linspace(*config.elevation_deg, config.beams))[::-1]
    azimuth = np.linspace(0, 2 * np.pi, config.azimuth_steps, endpoint=False)
    azimuth = azimuth + rng.uniform(0, 2 * np.pi / config.azimuth_steps)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)


def _ground_label(scene: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    label = np.where(np.abs(y) <= scene.road_half_width, 40, 72)
    for x0, x1, side in scene.parking:
        bay = (x >= x0) & (x <= x1) & (side * y > scene.road_half_width - 2.5) & (side * y <= scene.road_half_width)
        label = np.where(bay, 44, label)
    for x0, x1 in scene.other_ground:
        patch = (x >= x0) & (x <= x1) & (label == 72)
        label = np.where(patch, 49, label)
    return label


def scan(scene: Scene, frame: int, config: LidarConfig, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Points float32 [N, 4] (sensor frame) and labels uint32 [N] of the scan at sensor x = frame."""
    origin = ego_origin(scene, frame)
    d = ray_directions(config, rng)
    # Moving things advance with their speed; primitives out of range are not cast against.
    box_lo, box_hi = scene.box_lo.copy(), scene.box_hi.copy()
    box_lo[:, 0] += scene.box_velocity * frame
    box_hi[:, 0] += scene.box_velocity * frame
    gap = np.maximum(np.maximum(box_lo - origin, origin - box_hi), 0)
    boxes = np.nonzero(np.linalg.norm(gap, axis=1) < MAX_RANGE)[0]
    centre = scene.cyl_centre + np.stack([scene.cyl_velocity * frame, np.zeros_like(scene.cyl_velocity)], 1)
    cylinders = np.nonzero(np.linalg.norm(centre - origin[:2], axis=1) < MAX_RANGE + 1)[0]
    ellipsoids = np.nonzero(np.linalg.norm(scene.ell_centre - origin, axis=1) < MAX_RANGE + 5)[0]
    t_box, i_box = cast_boxes(origin, d, box_lo[boxes], box_hi[boxes])
    hits = [cast_ground(origin, d), t_box, np.where(i_box >= 0, boxes[i_box], -1)]
    t_cyl, i_cyl = cast_cylinders(origin, d, centre[cylinders], scene.cyl_radius[cylinders], scene.cyl_z[cylinders])
    i_cyl = np.where(i_cyl >= 0, cylinders[i_cyl], -1)
    t_ell, i_ell = cast_ellipsoids(origin, d, scene.ell_centre[ellipsoids], scene.ell_radii[ellipsoids])
    t_all = np.stack([hits[0], hits[1], t_cyl, t_ell], 1)                      # [R, 4]
    kind = np.argmin(t_all, 1)
    t = t_all[np.arange(d.shape[0]), kind]
    keep = (t < MAX_RANGE) & (rng.random(d.shape[0]) >= config.dropout)
    t, kind, d = t[keep], kind[keep], d[keep]
    i_box, i_cyl, i_ell = hits[2][keep], i_cyl[keep], i_ell[keep]
    world = origin + d * t[:, None]
    sem = np.zeros(t.shape[0], dtype=np.int64)
    inst = np.zeros(t.shape[0], dtype=np.int64)
    ground = kind == 0
    sem[ground] = _ground_label(scene, world[ground, 0], world[ground, 1])
    for k, index, labels, instances in ((1, i_box, scene.box_label, scene.box_instance),
                                        (2, i_cyl, scene.cyl_label, scene.cyl_instance)):
        sel = kind == k
        sem[sel] = labels[index[sel]]
        inst[sel] = instances[index[sel]]
    sem[kind == 3] = 70
    noisy = t + rng.normal(0, config.range_noise, t.shape[0])
    xyz = d * noisy[:, None]
    mean, spread = REMISSION_LUT[sem].T
    remission = np.clip(rng.normal(mean, spread) * (1 - 0.3 * t / MAX_RANGE), 0, 0.99)
    points = np.concatenate([xyz, remission[:, None]], 1).astype(np.float32)
    labels = (sem.astype(np.uint32) | (inst.astype(np.uint32) << 16))
    return points, labels


def write_sequence(root: Path, sequence: int, scans: int, seed: int, config: LidarConfig = LidarConfig()) -> None:
    """Writes sequences/XX/{velodyne,labels}/NNNNNN.*, poses.txt, calib.txt and times.txt."""
    folder = Path(root) / "sequences" / f"{sequence:02d}"
    (folder / "velodyne").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    scene = make_scene(np.random.default_rng([seed, sequence]))
    start = ego_origin(scene, 0)
    poses = []
    for frame in range(scans):
        points, labels = scan(scene, frame, config, np.random.default_rng([seed, sequence, frame]))
        points.tofile(folder / "velodyne" / f"{frame:06d}.bin")
        labels.tofile(folder / "labels" / f"{frame:06d}.label")
        velo_pose = np.eye(4)
        velo_pose[:3, 3] = ego_origin(scene, frame) - start
        poses.append((TR @ velo_pose @ np.linalg.inv(TR))[:3].reshape(-1))  # camera-0 pose, as SemanticKITTI
    np.savetxt(folder / "poses.txt", np.array(poses), fmt="%.6e")
    np.savetxt(folder / "times.txt", 0.1 * np.arange(scans), fmt="%.6e")
    tr = " ".join(f"{v:.6e}" for v in TR[:3].reshape(-1))
    (folder / "calib.txt").write_text("".join(f"P{i}: {P0}\n" for i in range(4)) + f"Tr: {tr}\n")


def generate_dataset(root: Path, sequences: Dict[int, int], seed: int = 0,
                     config: LidarConfig = LidarConfig()) -> Path:
    """Writes each sequence {number: scans} under root; returns root."""
    for sequence, scans in sequences.items():
        write_sequence(root, sequence, scans, seed, config)
    return Path(root)
