// The part of NCCL's C API that the emulator's libnccl.so.2 provides (fake_nccl.cpp), declared
// from the values of NCCL 2.28's nccl.h as cudarc 0.19's bindings (src/nccl/sys) spell them; this
// machine has no nccl.h. Shared by fake_nccl.cpp and its self-test, nccl_selftest.cpp.
#pragma once

#include <cstddef>

extern "C" {

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclNumResults = 8
} ncclResult_t;

typedef enum {
    ncclInt8 = 0,
    ncclUint8 = 1,
    ncclInt32 = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6,
    ncclFloat32 = 7,
    ncclFloat64 = 8,
    ncclBfloat16 = 9,
    ncclFloat8e4m3 = 10,
    ncclFloat8e5m2 = 11,
    ncclNumTypes = 12
} ncclDataType_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4, ncclNumOps = 5 } ncclRedOp_t;

// 128 opaque bytes; here "revsnn-fake-nccl " and the path of the rendezvous directory, NUL-padded.
typedef struct {
    char internal[128];
} ncclUniqueId;

typedef struct ncclComm* ncclComm_t;
typedef struct CUstream_st* cudaStream_t;

#define FAKE_NCCL_API __attribute__((visibility("default")))

FAKE_NCCL_API ncclResult_t ncclGetVersion(int* version);
FAKE_NCCL_API ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
FAKE_NCCL_API ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
FAKE_NCCL_API ncclResult_t ncclCommDestroy(ncclComm_t comm);
FAKE_NCCL_API ncclResult_t ncclCommAbort(ncclComm_t comm);
FAKE_NCCL_API ncclResult_t ncclCommFinalize(ncclComm_t comm);
FAKE_NCCL_API ncclResult_t ncclCommCount(ncclComm_t comm, int* count);
FAKE_NCCL_API ncclResult_t ncclCommUserRank(ncclComm_t comm, int* rank);
FAKE_NCCL_API ncclResult_t ncclCommCuDevice(ncclComm_t comm, int* device);
FAKE_NCCL_API ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error);
FAKE_NCCL_API const char* ncclGetErrorString(ncclResult_t result);
FAKE_NCCL_API const char* ncclGetLastError(ncclComm_t comm);
FAKE_NCCL_API ncclResult_t ncclGroupStart();
FAKE_NCCL_API ncclResult_t ncclGroupEnd();
FAKE_NCCL_API ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, std::size_t count,
                                         ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                         cudaStream_t stream);
FAKE_NCCL_API ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, std::size_t sendcount,
                                         ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream);
FAKE_NCCL_API ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, std::size_t count,
                                         ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream);

}  // extern "C"
