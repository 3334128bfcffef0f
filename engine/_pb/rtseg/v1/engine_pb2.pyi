from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValueKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_KIND_ABSENT: _ClassVar[ValueKind]
    VALUE_KIND_NUMBER: _ClassVar[ValueKind]
    VALUE_KIND_STRING: _ClassVar[ValueKind]
    VALUE_KIND_BOOL: _ClassVar[ValueKind]

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    ENTER: _ClassVar[Kind]
    EXIT: _ClassVar[Kind]

class Cause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAUSE_UNSPECIFIED: _ClassVar[Cause]
    EVENT: _ClassVar[Cause]
    TIME: _ClassVar[Cause]
    TRAIT: _ClassVar[Cause]
    SEGMENT_CREATED: _ClassVar[Cause]
    SEGMENT_DELETED: _ClassVar[Cause]
    MODEL_UPDATED: _ClassVar[Cause]
    USER_DELETED: _ClassVar[Cause]

class DestinationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESTINATION_STATE_UNSPECIFIED: _ClassVar[DestinationState]
    DELIVERING: _ClassVar[DestinationState]
    BACKING_OFF: _ClassVar[DestinationState]
VALUE_KIND_ABSENT: ValueKind
VALUE_KIND_NUMBER: ValueKind
VALUE_KIND_STRING: ValueKind
VALUE_KIND_BOOL: ValueKind
KIND_UNSPECIFIED: Kind
ENTER: Kind
EXIT: Kind
CAUSE_UNSPECIFIED: Cause
EVENT: Cause
TIME: Cause
TRAIT: Cause
SEGMENT_CREATED: Cause
SEGMENT_DELETED: Cause
MODEL_UPDATED: Cause
USER_DELETED: Cause
DESTINATION_STATE_UNSPECIFIED: DestinationState
DELIVERING: DestinationState
BACKING_OFF: DestinationState

class Value(_message.Message):
    __slots__ = ("string_value", "number_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    number_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., number_value: _Optional[float] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("user_id", "type", "timestamp_ms", "value", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    type: str
    timestamp_ms: int
    value: float
    properties: _containers.MessageMap[str, Value]
    def __init__(self, user_id: _Optional[str] = ..., type: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., value: _Optional[float] = ..., properties: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class StringColumn(_message.Message):
    __slots__ = ("blob", "offsets", "codes")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    blob: bytes
    offsets: bytes
    codes: bytes
    def __init__(self, blob: _Optional[bytes] = ..., offsets: _Optional[bytes] = ..., codes: _Optional[bytes] = ...) -> None: ...

class PropertyColumn(_message.Message):
    __slots__ = ("name", "kinds", "numbers", "strings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kinds: bytes
    numbers: bytes
    strings: StringColumn
    def __init__(self, name: _Optional[str] = ..., kinds: _Optional[bytes] = ..., numbers: _Optional[bytes] = ..., strings: _Optional[_Union[StringColumn, _Mapping]] = ...) -> None: ...

class ColumnarEvents(_message.Message):
    __slots__ = ("count", "user_ids", "types", "timestamp_ms", "values", "properties")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    count: int
    user_ids: StringColumn
    types: StringColumn
    timestamp_ms: bytes
    values: bytes
    properties: _containers.RepeatedCompositeFieldContainer[PropertyColumn]
    def __init__(self, count: _Optional[int] = ..., user_ids: _Optional[_Union[StringColumn, _Mapping]] = ..., types: _Optional[_Union[StringColumn, _Mapping]] = ..., timestamp_ms: _Optional[bytes] = ..., values: _Optional[bytes] = ..., properties: _Optional[_Iterable[_Union[PropertyColumn, _Mapping]]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events", "columns", "batch_id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    columns: ColumnarEvents
    batch_id: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., columns: _Optional[_Union[ColumnarEvents, _Mapping]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class IngestReply(_message.Message):
    __slots__ = ("accepted", "rejected", "rejections", "now_ms")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    now_ms: int
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., now_ms: _Optional[int] = ...) -> None: ...

class TraitUpdate(_message.Message):
    __slots__ = ("user_id", "traits", "timestamp_ms")
    class TraitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    traits: _containers.MessageMap[str, Value]
    timestamp_ms: int
    def __init__(self, user_id: _Optional[str] = ..., traits: _Optional[_Mapping[str, Value]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class TraitBatch(_message.Message):
    __slots__ = ("updates", "batch_id")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[TraitUpdate]
    batch_id: str
    def __init__(self, updates: _Optional[_Iterable[_Union[TraitUpdate, _Mapping]]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class SegmentSpec(_message.Message):
    __slots__ = ("name", "expression", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expression: str
    description: str
    def __init__(self, name: _Optional[str] = ..., expression: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class SegmentRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("name", "expression", "description", "size", "created_ms", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expression: str
    description: str
    size: int
    created_ms: int
    version: int
    def __init__(self, name: _Optional[str] = ..., expression: _Optional[str] = ..., description: _Optional[str] = ..., size: _Optional[int] = ..., created_ms: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SegmentList(_message.Message):
    __slots__ = ("segments",)
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    def __init__(self, segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ...) -> None: ...

class Preview(_message.Message):
    __slots__ = ("size", "sample_user_ids")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    size: int
    sample_user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, size: _Optional[int] = ..., sample_user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UserIdPage(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UserRef(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class UserView(_message.Message):
    __slots__ = ("user_id", "known", "segments", "scores", "traits")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TraitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    known: bool
    segments: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.ScalarMap[str, float]
    traits: _containers.MessageMap[str, Value]
    def __init__(self, user_id: _Optional[str] = ..., known: _Optional[bool] = ..., segments: _Optional[_Iterable[str]] = ..., scores: _Optional[_Mapping[str, float]] = ..., traits: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("name", "target", "horizon_ms", "lookback_ms", "churn", "features", "algorithm", "target_segment", "bucket_high", "bucket_medium", "seed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HORIZON_MS_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_MS_FIELD_NUMBER: _ClassVar[int]
    CHURN_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    TARGET_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    BUCKET_HIGH_FIELD_NUMBER: _ClassVar[int]
    BUCKET_MEDIUM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: str
    horizon_ms: int
    lookback_ms: int
    churn: bool
    features: _containers.RepeatedScalarFieldContainer[str]
    algorithm: str
    target_segment: str
    bucket_high: float
    bucket_medium: float
    seed: int
    def __init__(self, name: _Optional[str] = ..., target: _Optional[str] = ..., horizon_ms: _Optional[int] = ..., lookback_ms: _Optional[int] = ..., churn: _Optional[bool] = ..., features: _Optional[_Iterable[str]] = ..., algorithm: _Optional[str] = ..., target_segment: _Optional[str] = ..., bucket_high: _Optional[float] = ..., bucket_medium: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class CurvePoint(_message.Message):
    __slots__ = ("threshold", "precision", "recall", "size")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    precision: float
    recall: float
    size: int
    def __init__(self, threshold: _Optional[float] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., size: _Optional[int] = ...) -> None: ...

class ModelReport(_message.Message):
    __slots__ = ("name", "version", "auc", "base_rate", "rows", "positives", "curve", "features", "trained_ms", "cutoff_ms", "algorithm", "calibration_error", "validation_rows", "validation_positives", "predicted_positives", "target", "target_segment", "horizon_ms", "lookback_ms", "churn", "bucket_high", "bucket_medium", "candidates")
    class CandidatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    BASE_RATE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    CURVE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TRAINED_MS_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_MS_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ROWS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_POSITIVES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_POSITIVES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    HORIZON_MS_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_MS_FIELD_NUMBER: _ClassVar[int]
    CHURN_FIELD_NUMBER: _ClassVar[int]
    BUCKET_HIGH_FIELD_NUMBER: _ClassVar[int]
    BUCKET_MEDIUM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    auc: float
    base_rate: float
    rows: int
    positives: int
    curve: _containers.RepeatedCompositeFieldContainer[CurvePoint]
    features: _containers.RepeatedScalarFieldContainer[str]
    trained_ms: int
    cutoff_ms: int
    algorithm: str
    calibration_error: float
    validation_rows: int
    validation_positives: int
    predicted_positives: float
    target: str
    target_segment: str
    horizon_ms: int
    lookback_ms: int
    churn: bool
    bucket_high: float
    bucket_medium: float
    candidates: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., auc: _Optional[float] = ..., base_rate: _Optional[float] = ..., rows: _Optional[int] = ..., positives: _Optional[int] = ..., curve: _Optional[_Iterable[_Union[CurvePoint, _Mapping]]] = ..., features: _Optional[_Iterable[str]] = ..., trained_ms: _Optional[int] = ..., cutoff_ms: _Optional[int] = ..., algorithm: _Optional[str] = ..., calibration_error: _Optional[float] = ..., validation_rows: _Optional[int] = ..., validation_positives: _Optional[int] = ..., predicted_positives: _Optional[float] = ..., target: _Optional[str] = ..., target_segment: _Optional[str] = ..., horizon_ms: _Optional[int] = ..., lookback_ms: _Optional[int] = ..., churn: _Optional[bool] = ..., bucket_high: _Optional[float] = ..., bucket_medium: _Optional[float] = ..., candidates: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeployModelRequest(_message.Message):
    __slots__ = ("name", "onnx", "features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    onnx: bytes
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., onnx: _Optional[bytes] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelList(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelReport]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelReport, _Mapping]]] = ...) -> None: ...

class TrainProgress(_message.Message):
    __slots__ = ("phase", "report", "elapsed_ms")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    report: ModelReport
    elapsed_ms: int
    def __init__(self, phase: _Optional[str] = ..., report: _Optional[_Union[ModelReport, _Mapping]] = ..., elapsed_ms: _Optional[int] = ...) -> None: ...

class RescoreRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RescoreReply(_message.Message):
    __slots__ = ("deltas", "now_ms")
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    deltas: int
    now_ms: int
    def __init__(self, deltas: _Optional[int] = ..., now_ms: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("segments", "after_sequence", "from_oldest", "retained_only")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FROM_OLDEST_FIELD_NUMBER: _ClassVar[int]
    RETAINED_ONLY_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedScalarFieldContainer[str]
    after_sequence: int
    from_oldest: bool
    retained_only: bool
    def __init__(self, segments: _Optional[_Iterable[str]] = ..., after_sequence: _Optional[int] = ..., from_oldest: _Optional[bool] = ..., retained_only: _Optional[bool] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("sequence", "segment", "user_id", "kind", "at_ms", "cause")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    segment: str
    user_id: str
    kind: Kind
    at_ms: int
    cause: Cause
    def __init__(self, sequence: _Optional[int] = ..., segment: _Optional[str] = ..., user_id: _Optional[str] = ..., kind: _Optional[_Union[Kind, str]] = ..., at_ms: _Optional[int] = ..., cause: _Optional[_Union[Cause, str]] = ...) -> None: ...

class DeltaPage(_message.Message):
    __slots__ = ("deltas",)
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    deltas: _containers.RepeatedCompositeFieldContainer[Delta]
    def __init__(self, deltas: _Optional[_Iterable[_Union[Delta, _Mapping]]] = ...) -> None: ...

class ClockRequest(_message.Message):
    __slots__ = ("now_ms", "allow_far_future")
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FAR_FUTURE_FIELD_NUMBER: _ClassVar[int]
    now_ms: int
    allow_far_future: bool
    def __init__(self, now_ms: _Optional[int] = ..., allow_far_future: _Optional[bool] = ...) -> None: ...

class ClockReply(_message.Message):
    __slots__ = ("now_ms",)
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    now_ms: int
    def __init__(self, now_ms: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("gateway_only",)
    GATEWAY_ONLY_FIELD_NUMBER: _ClassVar[int]
    gateway_only: bool
    def __init__(self, gateway_only: _Optional[bool] = ...) -> None: ...

class Latency(_message.Message):
    __slots__ = ("count", "p50_ms", "p99_ms", "p999_ms", "max_ms")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    P999_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    count: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    def __init__(self, count: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., p999_ms: _Optional[float] = ..., max_ms: _Optional[float] = ...) -> None: ...

class ShardStats(_message.Message):
    __slots__ = ("shard", "slots", "users", "events", "events_applied", "events_dropped", "memory_bytes", "node", "apply_latency")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    APPLY_LATENCY_FIELD_NUMBER: _ClassVar[int]
    shard: int
    slots: int
    users: int
    events: int
    events_applied: int
    events_dropped: int
    memory_bytes: int
    node: str
    apply_latency: Latency
    def __init__(self, shard: _Optional[int] = ..., slots: _Optional[int] = ..., users: _Optional[int] = ..., events: _Optional[int] = ..., events_applied: _Optional[int] = ..., events_dropped: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., node: _Optional[str] = ..., apply_latency: _Optional[_Union[Latency, _Mapping]] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("events", "users", "segments", "shards", "shard_stats", "now_ms", "clock", "events_accepted", "events_rejected", "ingest_events_per_s", "ingest_latency", "round_latency", "first_sequence", "last_sequence", "subscribers", "uptime_ms", "retention_ms", "durability", "loop_lag")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SHARD_STATS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    INGEST_EVENTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    INGEST_LATENCY_FIELD_NUMBER: _ClassVar[int]
    ROUND_LATENCY_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    LOOP_LAG_FIELD_NUMBER: _ClassVar[int]
    events: int
    users: int
    segments: int
    shards: int
    shard_stats: _containers.RepeatedCompositeFieldContainer[ShardStats]
    now_ms: int
    clock: str
    events_accepted: int
    events_rejected: int
    ingest_events_per_s: float
    ingest_latency: Latency
    round_latency: Latency
    first_sequence: int
    last_sequence: int
    subscribers: int
    uptime_ms: int
    retention_ms: int
    durability: Durability
    loop_lag: Latency
    def __init__(self, events: _Optional[int] = ..., users: _Optional[int] = ..., segments: _Optional[int] = ..., shards: _Optional[int] = ..., shard_stats: _Optional[_Iterable[_Union[ShardStats, _Mapping]]] = ..., now_ms: _Optional[int] = ..., clock: _Optional[str] = ..., events_accepted: _Optional[int] = ..., events_rejected: _Optional[int] = ..., ingest_events_per_s: _Optional[float] = ..., ingest_latency: _Optional[_Union[Latency, _Mapping]] = ..., round_latency: _Optional[_Union[Latency, _Mapping]] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., subscribers: _Optional[int] = ..., uptime_ms: _Optional[int] = ..., retention_ms: _Optional[int] = ..., durability: _Optional[_Union[Durability, _Mapping]] = ..., loop_lag: _Optional[_Union[Latency, _Mapping]] = ...) -> None: ...

class Durability(_message.Message):
    __slots__ = ("fsync", "log_last_position", "log_bytes", "fsync_p99_ms", "snapshot_position", "snapshot_seconds", "recovery_seconds", "frames_replayed", "shard_restarts", "restore_seconds", "replay_seconds", "snapshot_pause_seconds")
    FSYNC_FIELD_NUMBER: _ClassVar[int]
    LOG_LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    FSYNC_P99_MS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_POSITION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_REPLAYED_FIELD_NUMBER: _ClassVar[int]
    SHARD_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_PAUSE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    fsync: str
    log_last_position: int
    log_bytes: int
    fsync_p99_ms: float
    snapshot_position: int
    snapshot_seconds: float
    recovery_seconds: float
    frames_replayed: int
    shard_restarts: int
    restore_seconds: float
    replay_seconds: float
    snapshot_pause_seconds: float
    def __init__(self, fsync: _Optional[str] = ..., log_last_position: _Optional[int] = ..., log_bytes: _Optional[int] = ..., fsync_p99_ms: _Optional[float] = ..., snapshot_position: _Optional[int] = ..., snapshot_seconds: _Optional[float] = ..., recovery_seconds: _Optional[float] = ..., frames_replayed: _Optional[int] = ..., shard_restarts: _Optional[int] = ..., restore_seconds: _Optional[float] = ..., replay_seconds: _Optional[float] = ..., snapshot_pause_seconds: _Optional[float] = ...) -> None: ...

class ScaleRequest(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: int
    def __init__(self, shards: _Optional[int] = ...) -> None: ...

class ScaleReply(_message.Message):
    __slots__ = ("shards", "slots_moved", "duration_ms")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_MOVED_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    shards: int
    slots_moved: int
    duration_ms: int
    def __init__(self, shards: _Optional[int] = ..., slots_moved: _Optional[int] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("clock", "retention_ms", "max_events_per_type")
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_TYPE_FIELD_NUMBER: _ClassVar[int]
    clock: str
    retention_ms: int
    max_events_per_type: int
    def __init__(self, clock: _Optional[str] = ..., retention_ms: _Optional[int] = ..., max_events_per_type: _Optional[int] = ...) -> None: ...

class ResetReply(_message.Message):
    __slots__ = ("now_ms",)
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    now_ms: int
    def __init__(self, now_ms: _Optional[int] = ...) -> None: ...

class RfmRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RfmBoundaries(_message.Message):
    __slots__ = ("source", "window_ms", "population", "recency", "frequency", "monetary", "computed_ms")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    POPULATION_FIELD_NUMBER: _ClassVar[int]
    RECENCY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    MONETARY_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_MS_FIELD_NUMBER: _ClassVar[int]
    source: str
    window_ms: int
    population: int
    recency: _containers.RepeatedScalarFieldContainer[float]
    frequency: _containers.RepeatedScalarFieldContainer[float]
    monetary: _containers.RepeatedScalarFieldContainer[float]
    computed_ms: int
    def __init__(self, source: _Optional[str] = ..., window_ms: _Optional[int] = ..., population: _Optional[int] = ..., recency: _Optional[_Iterable[float]] = ..., frequency: _Optional[_Iterable[float]] = ..., monetary: _Optional[_Iterable[float]] = ..., computed_ms: _Optional[int] = ...) -> None: ...

class RfmReply(_message.Message):
    __slots__ = ("boundaries", "deltas", "now_ms", "seconds")
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    boundaries: _containers.RepeatedCompositeFieldContainer[RfmBoundaries]
    deltas: int
    now_ms: int
    seconds: float
    def __init__(self, boundaries: _Optional[_Iterable[_Union[RfmBoundaries, _Mapping]]] = ..., deltas: _Optional[int] = ..., now_ms: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class GoalSpec(_message.Message):
    __slots__ = ("name", "segment", "target", "end_ms", "control_fraction", "minimize")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MINIMIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    segment: str
    target: str
    end_ms: int
    control_fraction: float
    minimize: bool
    def __init__(self, name: _Optional[str] = ..., segment: _Optional[str] = ..., target: _Optional[str] = ..., end_ms: _Optional[int] = ..., control_fraction: _Optional[float] = ..., minimize: _Optional[bool] = ...) -> None: ...

class GoalRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GoalDay(_message.Message):
    __slots__ = ("day_start_ms", "predicted", "actual", "predicted_control", "actual_control")
    DAY_START_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CONTROL_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_CONTROL_FIELD_NUMBER: _ClassVar[int]
    day_start_ms: int
    predicted: float
    actual: int
    predicted_control: float
    actual_control: int
    def __init__(self, day_start_ms: _Optional[int] = ..., predicted: _Optional[float] = ..., actual: _Optional[int] = ..., predicted_control: _Optional[float] = ..., actual_control: _Optional[int] = ...) -> None: ...

class Goal(_message.Message):
    __slots__ = ("name", "segment", "target", "created_ms", "end_ms", "control_fraction", "minimize", "model", "snapshot_size", "test_size", "control_size", "predicted", "predicted_control", "actual", "actual_control", "test_conversion", "control_conversion", "uplift", "uplift_low", "uplift_high", "days", "active", "segments", "now_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MINIMIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEST_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTROL_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CONTROL_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_CONTROL_FIELD_NUMBER: _ClassVar[int]
    TEST_CONVERSION_FIELD_NUMBER: _ClassVar[int]
    CONTROL_CONVERSION_FIELD_NUMBER: _ClassVar[int]
    UPLIFT_FIELD_NUMBER: _ClassVar[int]
    UPLIFT_LOW_FIELD_NUMBER: _ClassVar[int]
    UPLIFT_HIGH_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    segment: str
    target: str
    created_ms: int
    end_ms: int
    control_fraction: float
    minimize: bool
    model: str
    snapshot_size: int
    test_size: int
    control_size: int
    predicted: float
    predicted_control: float
    actual: int
    actual_control: int
    test_conversion: float
    control_conversion: float
    uplift: float
    uplift_low: float
    uplift_high: float
    days: _containers.RepeatedCompositeFieldContainer[GoalDay]
    active: bool
    segments: _containers.RepeatedScalarFieldContainer[str]
    now_ms: int
    def __init__(self, name: _Optional[str] = ..., segment: _Optional[str] = ..., target: _Optional[str] = ..., created_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., control_fraction: _Optional[float] = ..., minimize: _Optional[bool] = ..., model: _Optional[str] = ..., snapshot_size: _Optional[int] = ..., test_size: _Optional[int] = ..., control_size: _Optional[int] = ..., predicted: _Optional[float] = ..., predicted_control: _Optional[float] = ..., actual: _Optional[int] = ..., actual_control: _Optional[int] = ..., test_conversion: _Optional[float] = ..., control_conversion: _Optional[float] = ..., uplift: _Optional[float] = ..., uplift_low: _Optional[float] = ..., uplift_high: _Optional[float] = ..., days: _Optional[_Iterable[_Union[GoalDay, _Mapping]]] = ..., active: _Optional[bool] = ..., segments: _Optional[_Iterable[str]] = ..., now_ms: _Optional[int] = ...) -> None: ...

class ListGoalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GoalList(_message.Message):
    __slots__ = ("goals",)
    GOALS_FIELD_NUMBER: _ClassVar[int]
    goals: _containers.RepeatedCompositeFieldContainer[Goal]
    def __init__(self, goals: _Optional[_Iterable[_Union[Goal, _Mapping]]] = ...) -> None: ...

class SizeSample(_message.Message):
    __slots__ = ("time_ms", "size")
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    time_ms: int
    size: int
    def __init__(self, time_ms: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class SegmentHistory(_message.Message):
    __slots__ = ("name", "samples", "interval_ms", "retention_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    samples: _containers.RepeatedCompositeFieldContainer[SizeSample]
    interval_ms: int
    retention_ms: int
    def __init__(self, name: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[SizeSample, _Mapping]]] = ..., interval_ms: _Optional[int] = ..., retention_ms: _Optional[int] = ...) -> None: ...

class DestinationSpec(_message.Message):
    __slots__ = ("name", "url", "segments", "secret", "batch_size", "max_wait_ms", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    segments: _containers.RepeatedScalarFieldContainer[str]
    secret: str
    batch_size: int
    max_wait_ms: int
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., segments: _Optional[_Iterable[str]] = ..., secret: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_wait_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class DestinationRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDestinationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Destination(_message.Message):
    __slots__ = ("name", "url", "segments", "cursor", "delivered", "failures", "last_error", "state", "next_retry_ms", "secret", "batch_size", "max_wait_ms", "timeout_ms", "created_ms", "skipped", "last_sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_RETRY_MS_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    segments: _containers.RepeatedScalarFieldContainer[str]
    cursor: int
    delivered: int
    failures: int
    last_error: str
    state: DestinationState
    next_retry_ms: int
    secret: str
    batch_size: int
    max_wait_ms: int
    timeout_ms: int
    created_ms: int
    skipped: int
    last_sequence: int
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., segments: _Optional[_Iterable[str]] = ..., cursor: _Optional[int] = ..., delivered: _Optional[int] = ..., failures: _Optional[int] = ..., last_error: _Optional[str] = ..., state: _Optional[_Union[DestinationState, str]] = ..., next_retry_ms: _Optional[int] = ..., secret: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_wait_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., created_ms: _Optional[int] = ..., skipped: _Optional[int] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class DestinationList(_message.Message):
    __slots__ = ("destinations",)
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    def __init__(self, destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ...) -> None: ...
