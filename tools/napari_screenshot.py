#!/usr/bin/env python
"""Run the docs/napari.md flow in a real napari window and take its screenshot.

    xvfb-run -a -s "-screen 0 1400x900x24" python tools/napari_screenshot.py --work /tmp/napari_flow

Opens the synthetic nuclei sample, adds it (image + ground truth) to a training set, trains the
tiny model from scratch, segments, fine-tunes the new model on the same set, segments again and
saves the labels for Fiji and QuPath -- every step through the plugin's widgets, as a user clicks
them. Prints how long each training took and writes ``docs/images/napari_segment.png``.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first


def _wait(widget, app):
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.05)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="new folder for the training set, models and saved files")
    p.add_argument("--sample", default="nuclei", choices=["nuclei", "neural", "leaves"])
    p.add_argument("--scratch-iterations", type=int, default=300)
    p.add_argument("--finetune-iterations", type=int, default=100)
    p.add_argument("--output", default=os.path.join("docs", "images", "napari_segment.png"))
    args = p.parse_args()
    if os.path.exists(args.work):
        sys.exit(f"{args.work}: exists; give a new folder")

    import napari
    import npe2
    from napari.qt import get_qapp

    pm = npe2.PluginManager.instance()
    pm.discover()
    try:
        pm.get_manifest("objguided-d2")
    except KeyError:  # not pip-installed: register this checkout's manifest
        pm.register(npe2.PluginManifest.from_file(os.path.join("objguided_d2", "napari", "napari.yaml")))
    viewer = napari.Viewer(title="objguided-d2")
    viewer.window.resize(1400, 860)
    app = get_qapp()
    _, seg = viewer.window.add_plugin_dock_widget("objguided-d2", "Segment")
    _, train = viewer.window.add_plugin_dock_widget("objguided-d2", "Train")
    viewer.open_sample("objguided-d2", args.sample)
    image, truth = viewer.layers
    app.processEvents()

    train.training_set.value = os.path.join(args.work, "training_set")
    train.image.value, train.labels_layer.value = image.name, truth.name
    train.add()
    for k, (scratch, iters, out) in enumerate([(True, args.scratch_iterations, "run1"),
                                               (False, args.finetune_iterations, "run2")]):
        train.scratch.value, train.iterations.value = scratch, iters
        train.output_dir.value = os.path.join(args.work, out)
        t0 = time.perf_counter()
        train.train()
        _wait(train, app)
        print(f"{'from scratch' if scratch else 'fine-tune'}: {iters} iterations in "
              f"{time.perf_counter() - t0:.0f} s ({train.status.value})", flush=True)
        if train.model_dir is None or os.path.abspath(train.model_dir) != os.path.abspath(str(train.output_dir.value)):
            sys.exit(f"training failed: {train.status.value}\n{train.run_.log_tail()}")
        seg.image.value = image.name
        t0 = time.perf_counter()
        seg.run()
        _wait(seg, app)
        if not seg.status.value.endswith("objects"):
            sys.exit(f"segmentation failed: {seg.status.value}")
        print(f"segmented {image.data.shape[0]} images in {time.perf_counter() - t0:.1f} s: {seg.status.value}",
              flush=True)

    labels = viewer.layers[-1]
    for ext in ("tif", "csv", "zip"):  # label TIFF, objects table, Fiji ROI set (one slice per plane)
        labels.save(os.path.join(args.work, f"{labels.name}.{ext}"), plugin="objguided-d2")
    viewer.dims.set_current_step(0, 0)
    for layer in viewer.layers[1:-1]:
        layer.visible = False  # the ground truth and the first round's objects
    viewer.layers.selection.active = labels
    labels.selected_label = int(labels.data[0][labels.data.shape[1] // 2, labels.data.shape[2] // 2]) or 1
    app.processEvents()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    shot = viewer.screenshot(canvas_only=False)
    from PIL import Image

    # 256 colours are plenty for a GUI screenshot and keep the PNG small in the repository.
    Image.fromarray(shot[..., :3]).quantize(256).save(args.output, optimize=True)
    print(f"wrote {args.output}")
    # QuPath GeoJSON holds one 2D image: plane 0 as its own layer, saved as the docs describe.
    plane0 = viewer.add_labels(labels.data[0], name="plane 0", features=labels.features[labels.features["plane"] == 0])
    plane0.save(os.path.join(args.work, "plane0.geojson"), plugin="objguided-d2")
    print(f"saved for Fiji and QuPath in {args.work}: {sorted(os.listdir(args.work))}")
    viewer.close()


if __name__ == "__main__":
    main()
