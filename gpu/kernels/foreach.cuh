// Kernels over many tensors per launch (host side in gpu/src/ops/foreach.rs): the launch passes a
// table of tensors by value, and each block works on one chunk of FOREACH_CHUNK elements of one
// tensor. A table has `long long len[]` (each tensor's elements) and `int first_block[]`: entry
// t's chunks are the blocks first_block[t] .. first_block[t + 1] - 1 (none for an empty tensor),
// and the entries past the last tensor hold the number of blocks. Included by optim.cu and
// tensor.cu.
#pragma once

#define FOREACH_CHUNK 4096

// The entry of `table` whose chunks include this block, and the chunk's element range
// [start, end). Inlined, as must be the kernels' bodies that take the table by reference, so the
// table is read where the launch put it (a parameter, not a local copy).
template <typename Table>
__device__ __forceinline__ int chunk_of_block(const Table& table, long long& start, long long& end) {
    int t = 0;
    while (table.first_block[t + 1] <= (int)blockIdx.x) ++t;
    start = (long long)((int)blockIdx.x - table.first_block[t]) * FOREACH_CHUNK;
    end = start + FOREACH_CHUNK < table.len[t] ? start + FOREACH_CHUNK : table.len[t];
    return t;
}
