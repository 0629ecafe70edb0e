"""A ROS 2 node that enhances a camera topic with hbl-edge (UNTESTED here: no ROS on the build machine).

    ros2 run --prefix 'python3' … or simply:
    python3 examples/ros2_enhance_node.py --ros-args \\
        -p model:=/opt/models/lowlight/export -p backend:=auto -p temporal:=true \\
        -r image_raw:=/camera/image_raw -r image_enhanced:=/camera/image_enhanced

Subscribes to ``image_raw`` (sensor_msgs/Image, ``rgb8`` or ``bgr8``), publishes the enhanced
frame on ``image_enhanced`` with the same header (stamp and frame_id), so downstream nodes
(SLAM, detectors, rqt_image_view) see an ordinary camera. Parameters: ``model`` (a bundle, its
``export/`` folder, or a copy of that folder), ``backend`` (auto | trt | trt-rtx | ort | torch),
``temporal`` (motion-gated flicker removal, see docs/runtime.md), ``threads``.

Only rclpy and sensor_msgs are needed (no cv_bridge): the message's bytes are viewed as a
numpy array. The sensor-data QoS (best effort, depth 1) keeps latency from growing when
inference is slower than the camera, like ``hbl-edge stream`` does for live sources.

What was checked without ROS: the message ↔ array conversions below (tests/test_enhancer.py,
with stand-in messages) and the Enhancer calls; the node itself has not run on a ROS system.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ENCODINGS = ("rgb8", "bgr8")


def image_to_array(msg: Any) -> tuple[np.ndarray, bool]:
    """sensor_msgs/Image → (H×W×3 uint8 view, is_bgr). Rows may be padded (``step`` ≥ 3·width)."""
    if msg.encoding not in ENCODINGS:
        raise ValueError(f"encoding {msg.encoding!r} is not supported; publish rgb8 or bgr8 (or add an image_proc node)")
    buf = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview)) else msg.data,
                        dtype=np.uint8)
    rows = buf.reshape(msg.height, msg.step)[:, : msg.width * 3]
    return np.ascontiguousarray(rows.reshape(msg.height, msg.width, 3)), msg.encoding == "bgr8"


def array_to_image(image: np.ndarray, like: Any, make: Any) -> Any:
    """An Image message from H×W×3 uint8 ``image``, with ``like``'s header and encoding (``make()``: a new message)."""
    out = make()
    out.header = like.header
    out.height, out.width = int(image.shape[0]), int(image.shape[1])
    out.encoding = like.encoding
    out.is_bigendian = 0
    out.step = out.width * 3
    out.data = image.tobytes()
    return out


def main(args: list[str] | None = None) -> None:
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from hbl_edge import Enhancer
    from hbl_edge.runtime.temporal import TemporalFilter

    class EnhanceNode(Node):
        def __init__(self) -> None:
            super().__init__("hbl_edge_enhance")
            model = self.declare_parameter("model", "").value
            backend = self.declare_parameter("backend", "auto").value
            threads = self.declare_parameter("threads", 0).value or None
            if not model:
                raise SystemExit("set the model parameter: -p model:=/path/to/export")
            self.enhancer = Enhancer(model, backend=backend, threads=threads)
            self.temporal = TemporalFilter() if self.declare_parameter("temporal", False).value else None
            self.pub = self.create_publisher(Image, "image_enhanced", qos_profile_sensor_data)
            self.create_subscription(Image, "image_raw", self.on_image, qos_profile_sensor_data)
            self.get_logger().info(f"enhancing image_raw → image_enhanced with {model} ({self.enhancer.backend})")

        def on_image(self, msg: Image) -> None:
            try:
                frame, bgr = image_to_array(msg)
            except ValueError as e:
                self.get_logger().error(str(e), throttle_duration_sec=5.0)
                return
            rgb = frame[:, :, ::-1] if bgr else frame
            out = self.enhancer.process([np.ascontiguousarray(rgb)], temporal=self.temporal)[0]
            self.pub.publish(array_to_image(out[:, :, ::-1] if bgr else out, msg, Image))

    rclpy.init(args=args)
    node = EnhanceNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.enhancer.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
