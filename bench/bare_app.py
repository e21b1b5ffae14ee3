"""The reference for bench_api.py: a bare FastAPI endpoint on the same server stack
(uvicorn, uvloop, httptools, no access log) that reads the same request and answers 202
with a small JSON body — no auth, no validation, no database. What the framework alone
costs here, in the same sitting."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.post("/v1/sessions")
async def create(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"id": "ses_bare", "status": "queued"}, status_code=202)


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ok"}
