"""The gRPC transport: the service of ``proto/finechain.proto`` on the same event loop and batcher as REST, so rows from
both kinds of clients share forward passes. Client mistakes get gRPC's status codes with the same one-line messages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc

from finechain.flows import FlowResult, SpanAnswer
from finechain.heads import ClassPrediction, EntitiesPrediction, LabelsPrediction, Prediction, ValuePrediction
from finechain.serve.proto import finechain_pb2 as pb
from finechain.serve.proto import finechain_pb2_grpc as pb_grpc
from finechain.serve.service import ChainService, ClientError
from finechain.serve.settings import ServeSettings

STATUS = {  # HTTP status of a ClientError -> gRPC status code
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _entity(entity: Any) -> pb.Entity:
    return pb.Entity(**{k: v for k, v in entity.to_dict().items() if v is not None})


def _entities(p: EntitiesPrediction) -> pb.Answer:
    return pb.Answer(tagging=pb.EntitiesAnswer(entities=[_entity(e) for e in p.entities], tags=p.tags))


# how each kind of answer becomes a protobuf Answer (the transport's own table; the answers know nothing of protobuf)
TO_PROTO: dict[type[Prediction], Callable[[Any], pb.Answer]] = {
    ClassPrediction: lambda p: pb.Answer(classification=pb.ClassAnswer(label=p.label, score=p.score, scores=p.scores)),
    LabelsPrediction: lambda p: pb.Answer(multilabel=pb.LabelsAnswer(labels=p.labels, scores=p.scores)),
    ValuePrediction: lambda p: pb.Answer(regression=pb.ValueAnswer(value=p.value)),
    EntitiesPrediction: _entities,
}


def _stage_answer(answer: Prediction | list[SpanAnswer]) -> pb.StageAnswer:
    if isinstance(answer, list):
        items = [pb.SpanAnswer(span=_entity(a.span), answer=TO_PROTO[type(a.answer)](a.answer)) for a in answer]
        return pb.StageAnswer(spans=pb.SpanAnswers(items=items))
    return pb.StageAnswer(answer=TO_PROTO[type(answer)](answer))


def flow_result(result: FlowResult) -> pb.FlowResult:
    """A flow's record for one text as its protobuf message (the same fields as REST's, less the text)."""
    answers = {key: _stage_answer(answer) for key, answer in result.answers.items()}
    return pb.FlowResult(answers=answers, path=result.path, times_ms=result.times_ms)


class ChainServicer(pb_grpc.ChainServicer):
    """``Predict``, ``Tasks``, ``RunFlow`` and ``Flows`` on a :class:`ChainService`."""

    def __init__(self, service: ChainService, api_key: str | None) -> None:
        self.service, self.api_key = service, api_key

    async def _authorise(self, context: grpc.aio.ServicerContext) -> None:
        if self.api_key is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        given = metadata.get("x-api-key") or str(metadata.get("authorization", "")).removeprefix("Bearer ").strip()
        if given != self.api_key:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key (send metadata authorization: Bearer KEY)")

    async def _texts(self, request: pb.PredictRequest | pb.FlowRequest, context: grpc.aio.ServicerContext) -> list[Any]:
        await self._authorise(context)
        if request.texts and request.words:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send texts or words, not both")
        return list(request.texts) or [list(w.words) for w in request.words]

    async def _loaded(self, context: grpc.aio.ServicerContext) -> Any:
        """The chain being served (after the caller's key is checked); UNAVAILABLE while it loads."""
        await self._authorise(context)
        loaded = self.service.current
        if loaded is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the chain is still loading")
        return loaded

    async def _refuse(self, error: ClientError, context: grpc.aio.ServicerContext) -> None:
        where = f"{error.field}: " if error.field else ""
        fix = f" (fix: {error.fix})" if error.fix else ""  # as REST's error body and the CLI's one line say it
        await context.abort(STATUS.get(error.status, grpc.StatusCode.INVALID_ARGUMENT), f"{where}{error.message}{fix}")

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        """Answer the request's tasks for its texts."""
        texts = await self._texts(request, context)
        try:
            answers, timings = await self.service.predict(texts, list(request.tasks) or None, request.timeout_ms or None)
        except ClientError as error:
            await self._refuse(error, context)
        loaded = self.service.current
        predictions = [pb.TextAnswers(tasks={name: TO_PROTO[type(p)](p) for name, p in row.items()}) for row in answers]
        return pb.PredictResponse(predictions=predictions, timings=pb.Timings(**timings), version=loaded.version if loaded else "")

    async def Tasks(self, request: pb.TasksRequest, context: grpc.aio.ServicerContext) -> pb.TasksResponse:
        """The chain's tasks."""
        loaded = await self._loaded(context)
        infos = []
        for task in loaded.describe():
            metrics = task["metrics"]
            scalars = {split: {k: float(v) for k, v in (metrics.get(split) or {}).items()} for split in ("validation", "test")}
            infos.append(pb.TaskInfo(name=task["name"], type=task["type"], labels=task["labels"], metric=task["metric"] or "", **scalars))
        about = loaded.about
        return pb.TasksResponse(tasks=infos, backbone=about["backbone"], split=about["split"], version=loaded.version)

    async def RunFlow(self, request: pb.FlowRequest, context: grpc.aio.ServicerContext) -> pb.FlowResponse:
        """Each text through the named flow."""
        texts = await self._texts(request, context)
        try:
            results, total_ms = await self.service.run_flow(request.name, texts, request.timeout_ms or None)
        except ClientError as error:
            await self._refuse(error, context)
        loaded = self.service.current
        return pb.FlowResponse(results=[flow_result(r) for r in results], total_ms=total_ms, version=loaded.version if loaded else "")

    async def Flows(self, request: pb.FlowsRequest, context: grpc.aio.ServicerContext) -> pb.FlowsResponse:
        """The chain's flows and their stages."""
        loaded = await self._loaded(context)
        flows = []
        for spec in loaded.flows.values():
            stages = []
            for stage in spec.stages:
                when = None if stage.when is None else pb.Condition(**stage.when.model_dump(exclude_none=True))
                fields = {"task": stage.task, "chain": stage.chain or "", "after": stage.after or "", "input": stage.input}
                allow = {label: pb.Names(names=names) for label, names in (stage.allow if isinstance(stage.allow, dict) else {}).items()}
                stages.append(
                    pb.StageInfo(name=stage.key, when=when, otherwise=stage.otherwise, types=stage.types or [], allow=allow, **fields)
                )
            flows.append(pb.FlowInfo(name=spec.name, stages=stages))
        return pb.FlowsResponse(flows=flows)


def grpc_lifespan(settings: ServeSettings) -> Callable[[ChainService], AbstractAsyncContextManager[None]]:
    """A lifespan piece that runs the gRPC server on ``settings.grpc_port`` next to REST, on the same service."""

    @asynccontextmanager
    async def serving(service: ChainService) -> AsyncIterator[None]:
        shared = 1 if settings.workers > 1 else 0  # workers share the port; one process alone must own it
        server = grpc.aio.server(options=[("grpc.so_reuseport", shared), ("grpc.max_receive_message_length", settings.max_body_bytes)])
        pb_grpc.add_ChainServicer_to_server(ChainServicer(service, settings.api_key), server)
        server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        await server.start()
        try:
            yield
        finally:
            await server.stop(grace=settings.timeout_ms / 1000)

    return serving
